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

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};

use crate::policy::gatekeeper::matching::NamespaceLabels;
use crate::teams::Labels;

/// How long [`NamespaceCache::lookup`] waits for the API server when a
/// namespace is not in the store.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);

type NamespaceMeta = PartialObjectMeta<Namespace>;

/// Every Namespace's labels, from a reflector over all Namespaces.
pub struct NamespaceCache {
    store: Store<NamespaceMeta>,
    api: Api<NamespaceMeta>,
    synced: Arc<AtomicBool>,
}

impl NamespaceCache {
    /// Spawns the reflector on the current tokio runtime and returns at
    /// once; the store fills in the background ([`Self::wait_synced`]).
    /// Watch errors are logged and retried with kube-runtime's default
    /// backoff, for as long as the process runs.
    pub fn start(client: Client) -> Arc<NamespaceCache> {
        let api: Api<NamespaceMeta> = Api::all(client);
        let (store, writer) = reflector::store();
        let synced = Arc::new(AtomicBool::new(false));
        let stream = watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .modify(|ns| {
                // Labels are what the cache is for; the rest of the
                // metadata can be large (last-applied annotations).
                ns.metadata.annotations = None;
                ns.metadata.managed_fields = None;
            })
            .reflect(writer);
        let task_synced = synced.clone();
        tokio::spawn(async move {
            futures_util::pin_mut!(stream);
            while let Some(event) = stream.next().await {
                match event {
                    Ok(watcher::Event::InitDone) => {
                        // The reflector has swapped the complete listing
                        // into the store before passing the event on.
                        if !task_synced.swap(true, Ordering::Release) {
                            tracing::info!("namespace cache synced");
                        }
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "watching namespaces; retrying"),
                }
            }
        });
        Arc::new(NamespaceCache { store, api, synced })
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

    /// The labels of Namespace `name` as the store has them; `None` when
    /// the store does not know it (yet).
    pub fn cached_labels(&self, name: &str) -> Option<Labels> {
        self.store
            .get(&ObjectRef::new(name))
            .map(|ns| ns.metadata.labels.clone().unwrap_or_default())
    }

    /// The labels of Namespace `name`: from the store, else (a namespace
    /// created a moment ago) from the API server, waiting at most
    /// [`LOOKUP_TIMEOUT`]; `None` when neither knows it.
    pub async fn lookup(&self, name: &str) -> Option<Labels> {
        if let Some(labels) = self.cached_labels(name) {
            return Some(labels);
        }
        tracing::debug!(
            namespace = name,
            synced = self.is_synced(),
            "namespace not in the cache; asking the API server"
        );
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.api.get_opt(name)).await {
            Ok(Ok(found)) => found.map(|ns| ns.metadata.labels.unwrap_or_default()),
            Ok(Err(e)) => {
                tracing::warn!(namespace = name, error = %e, "looking up a namespace");
                None
            }
            Err(_) => {
                tracing::warn!(
                    namespace = name,
                    timeout = ?LOOKUP_TIMEOUT,
                    "looking up a namespace timed out"
                );
                None
            }
        }
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
        }
    }

    #[tokio::test]
    async fn the_store_answers_without_a_request() {
        let requests = Arc::new(AtomicUsize::new(0));
        let ml = Labels::from([("team".into(), "ml".into())]);
        let cache = cache(api_server(requests.clone()), "app-x", ml.clone());
        cache.wait_synced().await;
        assert_eq!(cache.lookup("app-x").await, Some(ml.clone()));
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
            Some(Labels::from([("team".into(), "ml".into())]))
        );
        assert_eq!(cache.lookup("nowhere").await, None);
        assert_eq!(requests.load(Ordering::SeqCst), 2);
    }
}
