//! The namespace cache: every Namespace's labels, kept current by a
//! reflector, so that team resolution and Gatekeeper `namespaceSelector`s
//! never wait on the API server during admission.
//!
//! Only metadata is watched (`Api<PartialObjectMeta<Namespace>>`: the API
//! server sends `PartialObjectMetadata`), and annotations and managed
//! fields are dropped before they reach the store: labels are all the
//! cache answers for.
//!
//! A namespace created a moment ago may not have reached the store yet
//! when the first object in it is admitted; [`NamespaceCache::lookup`]
//! then asks the API server directly, bounded by [`LOOKUP_TIMEOUT`].
//!
//! The store is trusted only while it is *current*: it holds a complete
//! listing and no watch error has happened since. A watch error (the API
//! server restarted, the connection broke) may hide changes, so the store
//! stops being current: lookups ask the API server instead, and the
//! watch is started afresh with a new listing, retried every
//! [`RESYNC_BACKOFF_MIN`]..[`RESYNC_BACKOFF_MAX`], which makes the store
//! current again. A lookup that can reach neither a current store nor the
//! API server is an error, never a guess: the caller refuses the request
//! rather than label it for the wrong team.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};

use crate::metrics::{LookupLabels, Metrics};
use crate::policy::gatekeeper::matching::NamespaceLabels;
use crate::teams::Labels;

/// How long [`NamespaceCache::lookup`] waits for the API server when a
/// namespace is not in the store.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

/// The first wait before listing again after a watch error; it doubles on
/// every failed attempt up to [`RESYNC_BACKOFF_MAX`], and resets once a
/// listing completes.
pub const RESYNC_BACKOFF_MIN: Duration = Duration::from_millis(250);

/// The longest wait between listing attempts: how long, at most, the
/// store stays stale after the API server is back.
pub const RESYNC_BACKOFF_MAX: Duration = Duration::from_secs(4);

type NamespaceMeta = PartialObjectMeta<Namespace>;

/// The labels of a namespace could not be had: the store is not current
/// and the API server did not answer. The message names the cause.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LookupError(pub String);

/// Every Namespace's labels, from a reflector over all Namespaces.
pub struct NamespaceCache {
    store: Store<NamespaceMeta>,
    api: Api<NamespaceMeta>,
    synced: Arc<AtomicBool>,
    /// The store holds a complete listing and no watch error has happened
    /// since: it can answer for every namespace.
    current: Arc<AtomicBool>,
    /// Why the store is not current, while it is not (after a watch error).
    stale_because: Arc<std::sync::Mutex<Option<String>>>,
    metrics: Arc<Metrics>,
}

impl NamespaceCache {
    /// Spawns the reflector on the current tokio runtime and returns at
    /// once; the store fills in the background ([`Self::wait_synced`]).
    /// A watch error is logged and the watch started afresh (a new
    /// listing) after a backoff, for as long as the process runs.
    pub fn start(client: Client, metrics: Arc<Metrics>) -> Arc<NamespaceCache> {
        let api: Api<NamespaceMeta> = Api::all(client);
        let (store, writer) = reflector::store();
        let cache = Arc::new(NamespaceCache {
            store,
            api: api.clone(),
            synced: Arc::new(AtomicBool::new(false)),
            current: Arc::new(AtomicBool::new(false)),
            stale_because: Arc::default(),
            metrics,
        });
        cache.metrics.namespace_cache_current.set(0);
        tokio::spawn(cache.clone().reflect(api, writer));
        cache
    }

    /// Keeps the store filled: a watch from a fresh listing, started
    /// again after every error.
    async fn reflect(
        self: Arc<Self>,
        api: Api<NamespaceMeta>,
        mut writer: reflector::store::Writer<NamespaceMeta>,
    ) {
        let mut backoff = RESYNC_BACKOFF_MIN;
        loop {
            let stream = watcher(api.clone(), watcher::Config::default()).modify(|ns| {
                // Labels are what the cache is for; the rest of the
                // metadata can be large (last-applied annotations).
                ns.metadata.annotations = None;
                ns.metadata.managed_fields = None;
            });
            futures_util::pin_mut!(stream);
            let error = loop {
                match stream.next().await {
                    Some(Ok(event)) => {
                        // A new listing is buffered and swapped in whole
                        // at `InitDone`; until then the old store stays.
                        writer.apply_watcher_event(&event);
                        if matches!(event, watcher::Event::InitDone) {
                            backoff = RESYNC_BACKOFF_MIN;
                            self.mark_current();
                        }
                    }
                    Some(Err(e)) => break e.to_string(),
                    None => break "the watch stream ended".to_owned(),
                }
            };
            self.mark_stale(&error);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(RESYNC_BACKOFF_MAX);
        }
    }

    fn mark_current(&self) {
        let first = !self.synced.swap(true, Ordering::AcqRel);
        let was_stale = !self.current.swap(true, Ordering::AcqRel);
        let because = self
            .stale_because
            .lock()
            .map(|mut b| b.take())
            .unwrap_or_default();
        self.metrics.namespace_cache_current.set(1);
        if first {
            tracing::info!(namespaces = self.store.len(), "namespace cache synced");
        } else if was_stale {
            tracing::info!(
                namespaces = self.store.len(),
                after = because.as_deref().unwrap_or(""),
                "namespace cache re-listed; it answers lookups again"
            );
        }
    }

    fn mark_stale(&self, error: &str) {
        let was_current = self.current.swap(false, Ordering::AcqRel);
        self.metrics.namespace_cache_current.set(0);
        if let Ok(mut because) = self.stale_because.lock() {
            because.get_or_insert_with(|| error.to_owned());
        }
        if was_current {
            tracing::warn!(
                error,
                "watching namespaces failed; lookups ask the API server until the cache has re-listed"
            );
        } else {
            tracing::debug!(error, "watching namespaces failed again; retrying");
        }
    }

    /// Resolves once the initial listing of Namespaces is in the store.
    pub async fn wait_synced(&self) {
        if self.store.wait_until_ready().await.is_err() {
            // The reflector task is gone (the runtime is shutting down):
            // the store will never fill.
            std::future::pending::<()>().await;
        }
    }

    /// Whether the initial listing of Namespaces is in the store.
    pub fn is_synced(&self) -> bool {
        self.synced.load(Ordering::Acquire)
    }

    /// Whether the store is current: a complete listing, and no watch
    /// error since. Only a current store answers lookups.
    pub fn is_current(&self) -> bool {
        self.current.load(Ordering::Acquire)
    }

    /// Why the store is not current, after a watch error (`None` while it
    /// is current, and before the first listing).
    pub fn stale_because(&self) -> Option<String> {
        self.stale_because.lock().ok().and_then(|b| b.clone())
    }

    /// The labels of Namespace `name` as the store has them; `None` when
    /// the store does not know it (yet).
    pub fn cached_labels(&self, name: &str) -> Option<Labels> {
        self.store
            .get(&ObjectRef::new(name))
            .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
    }

    /// The labels of Namespace `name`: from the store while it is current;
    /// else (a namespace created a moment ago, or a store that may be
    /// stale after a watch error) from the API server, waiting at most
    /// [`LOOKUP_TIMEOUT`]. `Ok(None)`: the namespace does not exist. An
    /// error: neither could tell, and the caller must not guess.
    pub async fn lookup(&self, name: &str) -> Result<Option<Labels>, LookupError> {
        let current = self.is_current();
        if current && let Some(labels) = self.cached_labels(name) {
            self.count("cache");
            return Ok(Some(labels));
        }
        tracing::debug!(
            namespace = name,
            current,
            "namespace not in a current cache; asking the API server"
        );
        let stale = || {
            if current {
                String::new()
            } else {
                match self.stale_because() {
                    Some(e) => format!(" (the namespace cache is re-listing after: {e})"),
                    None => " (the namespace cache has not listed yet)".to_owned(),
                }
            }
        };
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.api.get_opt(name)).await {
            Ok(Ok(found)) => {
                self.count("api");
                Ok(found.map(|ns| ns.metadata.labels.unwrap_or_default()))
            }
            Ok(Err(e)) => {
                self.count("failed");
                tracing::warn!(namespace = name, error = %e, "looking up a namespace");
                Err(LookupError(format!(
                    "the API server could not be asked: {e}{}",
                    stale()
                )))
            }
            Err(_) => {
                self.count("failed");
                tracing::warn!(
                    namespace = name,
                    timeout = ?LOOKUP_TIMEOUT,
                    "looking up a namespace timed out"
                );
                Err(LookupError(format!(
                    "the API server did not answer within {LOOKUP_TIMEOUT:?}{}",
                    stale()
                )))
            }
        }
    }

    fn count(&self, source: &'static str) {
        self.metrics
            .namespace_lookups
            .get_or_create(&LookupLabels { source })
            .inc();
    }
}

/// For Gatekeeper's `namespaceSelector`: the store only, never a request.
impl NamespaceLabels for NamespaceCache {
    fn labels(&self, namespace: &str) -> Option<Labels> {
        self.cached_labels(namespace)
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;
    use std::sync::atomic::AtomicUsize;

    use bytes::Bytes;
    use http_body_util::Full;
    use kube::api::ObjectMeta;
    use kube::api::PartialObjectMetaExt as _;

    use super::*;

    /// An API server that knows one namespace, `fresh` (team ml), and
    /// counts the requests it gets.
    fn api_server(requests: Arc<AtomicUsize>) -> Client {
        let service = tower::service_fn(move |req: http::Request<kube::client::Body>| {
            requests.fetch_add(1, Ordering::SeqCst);
            let (status, body) = if req.uri().path() == "/api/v1/namespaces/fresh" {
                (
                    200,
                    r#"{"apiVersion":"meta.k8s.io/v1","kind":"PartialObjectMetadata","metadata":{"name":"fresh","labels":{"team":"ml"}}}"#,
                )
            } else {
                (
                    404,
                    r#"{"apiVersion":"v1","kind":"Status","status":"Failure","reason":"NotFound","code":404,"message":"not found"}"#,
                )
            };
            let response = http::Response::builder()
                .status(status)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from_static(body.as_bytes())))
                .unwrap();
            async move { Ok::<_, Infallible>(response) }
        });
        Client::new(service, "default")
    }

    /// A cache whose store holds `known` (with `labels`), synced.
    fn cache(client: Client, known: &str, labels: Labels) -> NamespaceCache {
        let (store, mut writer) = reflector::store();
        let ns = ObjectMeta {
            name: Some(known.into()),
            labels: Some(labels),
            ..ObjectMeta::default()
        }
        .into_request_partial::<Namespace>();
        writer.apply_watcher_event(&watcher::Event::Init);
        writer.apply_watcher_event(&watcher::Event::InitApply(ns));
        writer.apply_watcher_event(&watcher::Event::InitDone);
        NamespaceCache {
            store,
            api: Api::all(client),
            synced: Arc::new(AtomicBool::new(true)),
            current: Arc::new(AtomicBool::new(true)),
            stale_because: Arc::default(),
            metrics: Arc::new(Metrics::new()),
        }
    }

    /// An API server that cannot be reached.
    fn unreachable() -> Client {
        let service = tower::service_fn(|_req: http::Request<kube::client::Body>| async {
            Err::<http::Response<Full<Bytes>>, _>(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connection refused",
            ))
        });
        Client::new(service, "default")
    }

    #[tokio::test]
    async fn the_store_answers_without_a_request() {
        let requests = Arc::new(AtomicUsize::new(0));
        let ml = Labels::from([("team".into(), "ml".into())]);
        let cache = cache(api_server(requests.clone()), "app-x", ml.clone());
        cache.wait_synced().await;
        assert_eq!(cache.lookup("app-x").await, Ok(Some(ml.clone())));
        assert_eq!(cache.cached_labels("app-x"), Some(ml.clone()));
        let gatekeeper: &dyn NamespaceLabels = &cache;
        assert_eq!(gatekeeper.labels("app-x"), Some(ml));
        assert_eq!(gatekeeper.labels("fresh"), None, "the trait never asks");
        assert_eq!(requests.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_namespace_not_yet_in_the_store_is_asked_for() {
        let requests = Arc::new(AtomicUsize::new(0));
        let cache = cache(api_server(requests.clone()), "app-x", Labels::new());
        assert_eq!(cache.cached_labels("fresh"), None);
        assert_eq!(
            cache.lookup("fresh").await,
            Ok(Some(Labels::from([("team".into(), "ml".into())])))
        );
        assert_eq!(cache.lookup("nowhere").await, Ok(None));
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn after_a_watch_error_the_api_server_answers_not_the_stale_store() {
        let requests = Arc::new(AtomicUsize::new(0));
        // The store says `fresh` is team data; the API server (the truth)
        // says ml: it was relabelled while the watch was down.
        let data = Labels::from([("team".into(), "data".into())]);
        let cache = cache(api_server(requests.clone()), "fresh", data.clone());
        assert_eq!(cache.lookup("fresh").await, Ok(Some(data)));
        cache.mark_stale("connection refused");
        assert!(!cache.is_current());
        assert_eq!(
            cache.lookup("fresh").await,
            Ok(Some(Labels::from([("team".into(), "ml".into())])))
        );
        assert_eq!(requests.load(Ordering::SeqCst), 1);
        cache.mark_current();
        assert_eq!(cache.stale_because(), None);
        assert!(cache.lookup("fresh").await.is_ok());
        assert_eq!(requests.load(Ordering::SeqCst), 1, "current again");
    }

    #[tokio::test]
    async fn a_stale_store_and_no_api_server_is_an_error_not_a_guess() {
        let ml = Labels::from([("team".into(), "ml".into())]);
        let cache = cache(unreachable(), "app-x", ml.clone());
        assert_eq!(cache.lookup("app-x").await, Ok(Some(ml)), "current");
        let err = cache.lookup("app-new").await.unwrap_err();
        assert!(err.0.contains("connection refused"), "{err}");
        cache.mark_stale("watch failed: connection reset");
        let err = cache.lookup("app-x").await.unwrap_err();
        assert!(
            err.0.contains("connection refused")
                && err
                    .0
                    .contains("re-listing after: watch failed: connection reset"),
            "{err}"
        );
        let metrics = cache.metrics.encode();
        assert!(
            metrics.contains("tollgate_namespace_lookups_total{source=\"failed\"} 2"),
            "{metrics}"
        );
    }
}
