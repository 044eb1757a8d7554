//! The webhook's serving certificate, kept in a Secret in its namespace
//! (`certificates.manage`).
//!
//! Every replica runs the same loop: read the Secret, decide with [`plan`]
//! what it should hold now, and write that with the resourceVersion it read.
//! Optimistic concurrency makes exactly one replica's write win each
//! transition; the others get a conflict and take the winner's Secret from
//! their watch. Whatever the Secret holds is swapped into the
//! [`IdentityStore`] for new connections and its CA bundle published for
//! the caBundle patcher.
//!
//! The Secret (`kubernetes.io/tls`) holds `tls.crt`, `tls.key`, `ca.crt`
//! (the trusted CAs, the signing one first) and `ca.key` (the signing CA's
//! key). Transitions, each its own write:
//! - no Secret, or one that does not parse → a new CA and leaf;
//! - the CA past `renewAt` of its lifetime → a new CA, trusted *beside* the
//!   old one (the leaf unchanged, still signed by the old CA);
//! - a grace period (three check intervals) later → a leaf from the new CA;
//! - the leaf past `renewAt` (or naming the wrong hosts) → a new leaf;
//! - a grace period after the leaf moved to the new CA → the old CA dropped.
//!
//! The grace periods give every replica time to patch the bundle and load
//! the new leaf, so the apiserver always trusts the leaf it is served.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use anyhow::Context as _;
use futures_util::StreamExt as _;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{ObjectMeta, PostParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use time::{Duration, OffsetDateTime};
use tokio::sync::watch;
use tollgate_certs::inspect::{self, CertInfo};
use tollgate_certs::issue::{Ca, LeafSpec, service_dns_names};
use tollgate_certs::metrics::CertMetrics;
use tollgate_certs::reload::{IdentityStore, Material};

use crate::config::Config;

const CERT: &str = "tls.crt";
const KEY: &str = "tls.key";
const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const ROTATIONS: &str = "tollgate.io/rotations";
const CA_ROLLED_AT: &str = "tollgate.io/ca-rolled-at";
const LEAF_ISSUED_AT: &str = "tollgate.io/leaf-issued-at";

/// The label of the serving certificate in `tollgate_cert_expiry_timestamp_seconds`.
pub const SERVING: &str = "serving";
/// The label of the signing CA in the same metric.
pub const CA: &str = "ca";

/// What the Secret must hold, from `certificates` in the config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub namespace: String,
    pub secret_name: String,
    pub dns_names: Vec<String>,
    pub ips: Vec<IpAddr>,
    pub ca_lifetime: Duration,
    pub leaf_lifetime: Duration,
    pub renew_at: f64,
    pub check_interval: std::time::Duration,
}

impl Settings {
    pub fn from_config(config: &Config, namespace: &str) -> Settings {
        let c = &config.certificates;
        let mut dns_names = service_dns_names(&c.service_name, namespace);
        dns_names.extend(c.extra_dns_names.iter().cloned());
        Settings {
            namespace: namespace.to_owned(),
            secret_name: c.secret_name.clone(),
            dns_names,
            ips: c.ip_addresses.clone(),
            ca_lifetime: seconds(c.ca_lifetime_seconds),
            leaf_lifetime: seconds(c.leaf_lifetime_seconds),
            renew_at: c.renew_at,
            check_interval: std::time::Duration::from_secs(c.check_interval_seconds),
        }
    }

    /// How long a new CA is trusted before leaves move to it, and a new
    /// leaf served before the old CA is dropped.
    fn grace(&self) -> Duration {
        Duration::try_from(self.check_interval * 3).unwrap_or(Duration::MINUTE)
    }
}

fn seconds(s: u64) -> Duration {
    Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX))
}

/// The Secret's data (text) and annotations: what [`plan`] reads and writes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Contents {
    pub data: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
}

impl Contents {
    fn from_secret(secret: &Secret) -> Contents {
        let data = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(&v.0).into_owned()))
            .collect();
        let annotations = secret.metadata.annotations.clone().unwrap_or_default();
        Contents { data, annotations }
    }

    fn get(&self, key: &str) -> anyhow::Result<&str> {
        self.data
            .get(key)
            .map(String::as_str)
            .with_context(|| format!("no {key}"))
    }

    fn stamp(&self, key: &str) -> Option<OffsetDateTime> {
        let unix = self.annotations.get(key)?.parse().ok()?;
        OffsetDateTime::from_unix_timestamp(unix).ok()
    }

    fn rotations(&self) -> u64 {
        self.annotations
            .get(ROTATIONS)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    /// The identity to serve: the leaf, its key, and the trusted CAs.
    pub fn material(&self) -> anyhow::Result<Material> {
        Ok(Material {
            cert_pem: self.get(CERT)?.to_owned(),
            key_pem: self.get(KEY)?.to_owned(),
            ca_pem: Some(self.get(CA_CERT)?.to_owned()),
        })
    }

    /// The trusted CAs, PEM: the webhook configurations' `caBundle`.
    pub fn bundle(&self) -> Option<&str> {
        self.data.get(CA_CERT).map(String::as_str)
    }
}

/// The Secret's contents, checked.
struct Stored {
    ca: Ca,
    ca_info: CertInfo,
    /// Every trusted CA, PEM, the signing one first.
    bundle: Vec<String>,
    leaf: CertInfo,
    leaf_from_signing_ca: bool,
}

fn check(contents: &Contents, now: OffsetDateTime) -> anyhow::Result<Stored> {
    let bundle_pem = contents.get(CA_CERT)?;
    let bundle = tollgate_certs::tls::split_bundle(bundle_pem)?;
    let ca = Ca::from_pem(&bundle[0], contents.get(CA_KEY)?)
        .context("ca.key does not go with the first certificate of ca.crt")?;
    let ca_info = inspect::inspect_pem(&bundle[0])?;
    if let Some(problem) = ca_info.validity_problem(now) {
        anyhow::bail!("the CA is {problem}");
    }
    let material = contents.material()?;
    let provider = rustls::crypto::ring::default_provider();
    tollgate_certs::reload::Identity::load(&material, "tls.crt", &provider)?;
    let leaf_der = &inspect::parse_pem_chain(&material.cert_pem)?[0];
    let leaf = inspect::inspect_der(leaf_der)?;
    if inspect::check_signed_by(leaf_der, bundle_pem)?.is_some() {
        anyhow::bail!("tls.crt is not signed by any CA in ca.crt");
    }
    let leaf_from_signing_ca = inspect::check_signed_by(leaf_der, &bundle[0])?.is_none();
    Ok(Stored {
        ca,
        ca_info,
        bundle,
        leaf,
        leaf_from_signing_ca,
    })
}

/// What the Secret should hold next, and why; `None` when it is fine as it
/// is. `current` is `None` when there is no Secret.
pub fn plan(
    current: Option<&Contents>,
    settings: &Settings,
    now: OffsetDateTime,
) -> anyhow::Result<Option<(Contents, String)>> {
    let fresh = |reason: String| -> anyhow::Result<Option<(Contents, String)>> {
        let ca = Ca::generate_at("tollgate webhook CA", settings.ca_lifetime, now)?;
        let rotations = current.map_or(0, Contents::rotations) + 1;
        let mut next = Contents::default();
        next.data.insert(CA_CERT.into(), ca.cert_pem().to_owned());
        next.data.insert(CA_KEY.into(), ca.key_pem().to_owned());
        issue_leaf(&mut next, &ca, settings, now, rotations)?;
        Ok(Some((next, reason)))
    };
    let Some(contents) = current else {
        return fresh("no Secret yet: new CA and serving certificate".into());
    };
    let stored = match check(contents, now) {
        Ok(stored) => stored,
        Err(e) => {
            return fresh(format!(
                "the Secret is unusable ({e:#}): new CA and serving certificate"
            ));
        }
    };
    let grace = settings.grace();
    let mut next = contents.clone();

    if stored.ca_info.elapsed_fraction(now) >= settings.renew_at {
        let ca = Ca::generate_at("tollgate webhook CA", settings.ca_lifetime, now)?;
        let mut bundle = vec![ca.cert_pem().to_owned()];
        bundle.extend(stored.bundle.iter().cloned());
        next.data.insert(CA_CERT.into(), bundle.concat());
        next.data.insert(CA_KEY.into(), ca.key_pem().to_owned());
        next.annotations
            .insert(CA_ROLLED_AT.into(), now.unix_timestamp().to_string());
        return Ok(Some((
            next,
            "CA rollover: a new CA, trusted beside the old one".into(),
        )));
    }

    let leaf_expired = stored.leaf.validity_problem(now).is_some();
    let rolled_at = contents
        .stamp(CA_ROLLED_AT)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    let move_to_new_ca = !stored.leaf_from_signing_ca && now >= rolled_at + grace;
    let waiting_for_bundle = !stored.leaf_from_signing_ca && !move_to_new_ca;
    let due = stored.leaf.elapsed_fraction(now) >= settings.renew_at;
    let wrong_names = !names_match(&stored.leaf, settings);
    if leaf_expired || move_to_new_ca || ((due || wrong_names) && !waiting_for_bundle) {
        let reason = if leaf_expired {
            "the serving certificate has expired"
        } else if move_to_new_ca {
            "the serving certificate moves to the new CA"
        } else if wrong_names {
            "the serving certificate names other hosts than configured"
        } else {
            "the serving certificate is due for renewal"
        };
        let rotations = contents.rotations() + 1;
        issue_leaf(&mut next, &stored.ca, settings, now, rotations)?;
        return Ok(Some((next, reason.into())));
    }

    let leaf_issued_at = contents
        .stamp(LEAF_ISSUED_AT)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH);
    if stored.bundle.len() > 1 && stored.leaf_from_signing_ca && now >= leaf_issued_at + grace {
        next.data.insert(CA_CERT.into(), stored.bundle[0].clone());
        next.annotations.remove(CA_ROLLED_AT);
        return Ok(Some((
            next,
            "the old CA is no longer trusted: no certificate it signed is served".into(),
        )));
    }
    Ok(None)
}

fn issue_leaf(
    next: &mut Contents,
    ca: &Ca,
    settings: &Settings,
    now: OffsetDateTime,
    rotations: u64,
) -> anyhow::Result<()> {
    let spec = LeafSpec::server(&settings.dns_names, &settings.ips)
        .with_lifetime(settings.leaf_lifetime)
        .issued_at(now);
    let leaf = ca.issue(&spec)?;
    next.data.insert(CERT.into(), leaf.cert_pem);
    next.data.insert(KEY.into(), leaf.key_pem);
    next.annotations
        .insert(LEAF_ISSUED_AT.into(), now.unix_timestamp().to_string());
    next.annotations
        .insert(ROTATIONS.into(), rotations.to_string());
    Ok(())
}

fn names_match(leaf: &CertInfo, settings: &Settings) -> bool {
    let mut have = leaf.dns_names.clone();
    have.sort();
    let mut want = settings.dns_names.clone();
    want.sort();
    let mut have_ips = leaf.ip_addresses.clone();
    have_ips.sort();
    let mut want_ips: Vec<String> = settings.ips.iter().map(IpAddr::to_string).collect();
    want_ips.sort();
    have == want && have_ips == want_ips
}

/// Keeps the Secret current and the identity store and CA bundle in step
/// with it.
pub struct ServingCert {
    api: Api<Secret>,
    settings: Settings,
    store: Arc<IdentityStore>,
    bundle: watch::Sender<String>,
    metrics: CertMetrics,
}

impl ServingCert {
    /// Brings the Secret into shape (creating it if need be) and loads it.
    /// Returns the controller, to be [`run`](ServingCert::run), the store
    /// the server serves from, and the CA bundle as it changes.
    pub async fn bootstrap(
        client: Client,
        settings: Settings,
        metrics: CertMetrics,
    ) -> anyhow::Result<(ServingCert, Arc<IdentityStore>, watch::Receiver<String>)> {
        let api: Api<Secret> = Api::namespaced(client, &settings.namespace);
        let mut attempt = 0;
        let contents = loop {
            attempt += 1;
            match reconcile(&api, &settings).await {
                Ok(contents) => break contents,
                Err(e) if attempt < 5 => {
                    tracing::warn!(error = %format!("{e:#}"), attempt, "serving certificate not ready; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                Err(e) => {
                    return Err(e.context(format!(
                        "bootstrapping the serving certificate in Secret {}/{}",
                        settings.namespace, settings.secret_name
                    )));
                }
            }
        };
        let store = IdentityStore::with_metrics(&contents.material()?, SERVING, metrics.clone())?;
        let bundle = contents.bundle().unwrap_or_default().to_owned();
        let (tx, rx) = watch::channel(bundle);
        let controller = ServingCert {
            api,
            settings,
            store: store.clone(),
            bundle: tx,
            metrics,
        };
        controller.observe_ca(&contents);
        Ok((controller, store, rx))
    }

    /// Checks the Secret every `checkIntervalSeconds` and follows its
    /// changes through a watch, until the process ends.
    pub async fn run(self) {
        let this = Arc::new(self);
        let watching = this.clone();
        tokio::spawn(async move { watching.follow().await });
        loop {
            tokio::time::sleep(this.settings.check_interval).await;
            match reconcile(&this.api, &this.settings).await {
                Ok(contents) => this.apply(&contents),
                Err(e) => {
                    this.metrics.failed();
                    tracing::warn!(error = %format!("{e:#}"), "checking the serving certificate failed; serving the current one");
                }
            }
        }
    }

    /// Applies every version of the Secret the watch delivers (another
    /// replica's writes among them).
    async fn follow(&self) {
        let config = watcher::Config::default()
            .fields(&format!("metadata.name={}", self.settings.secret_name));
        let mut stream = watcher(self.api.clone(), config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(event) = stream.next().await {
            match event {
                Ok(secret) => self.apply(&Contents::from_secret(&secret)),
                Err(e) => tracing::warn!(error = %e, "watching the serving certificate Secret"),
            }
        }
    }

    /// Serves `contents` from now on, if it differs from what is served.
    fn apply(&self, contents: &Contents) {
        let Ok(material) = contents.material() else {
            return;
        };
        let current = self.store.current();
        let changed = current.ca_pem != material.ca_pem || !same_leaf(&current.leaf, &material);
        if changed && let Err(e) = self.store.replace(&material) {
            tracing::warn!(error = %e, "the Secret's certificate does not load; serving the current one");
        }
        if let Some(bundle) = contents.bundle() {
            self.bundle.send_if_modified(|b| {
                let changed = b != bundle;
                if changed {
                    bundle.clone_into(b);
                }
                changed
            });
        }
        self.observe_ca(contents);
    }

    fn observe_ca(&self, contents: &Contents) {
        if let Some(info) = contents.bundle().and_then(|b| inspect::inspect_pem(b).ok()) {
            self.metrics.set_expiry(CA, info.not_after.unix_timestamp());
        }
    }
}

fn same_leaf(served: &CertInfo, material: &Material) -> bool {
    inspect::inspect_pem(&material.cert_pem).is_ok_and(|info| &info == served)
}

/// Reads the Secret, writes what [`plan`] says it should hold (at the
/// resourceVersion read), and returns what it holds afterwards. A conflict
/// means another replica wrote first: its version is read and returned.
async fn reconcile(api: &Api<Secret>, settings: &Settings) -> anyhow::Result<Contents> {
    for _ in 0..3 {
        let existing = api.get_opt(&settings.secret_name).await.with_context(|| {
            format!(
                "reading Secret {}/{}",
                settings.namespace, settings.secret_name
            )
        })?;
        let current = existing.as_ref().map(Contents::from_secret);
        let Some((next, reason)) = plan(current.as_ref(), settings, OffsetDateTime::now_utc())?
        else {
            return current.context("plan keeps a Secret that does not exist");
        };
        let secret = to_secret(&next, settings, existing.as_ref());
        let written = match &existing {
            Some(_) => {
                api.replace(&settings.secret_name, &PostParams::default(), &secret)
                    .await
            }
            None => api.create(&PostParams::default(), &secret).await,
        };
        match written {
            Ok(_) => {
                tracing::info!(
                    secret = %format!("{}/{}", settings.namespace, settings.secret_name),
                    rotations = next.rotations(),
                    %reason,
                    "serving certificate Secret written"
                );
                return Ok(next);
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::info!(%reason, "another replica updated the serving certificate first; taking theirs");
            }
            Err(e) => return Err(e).context("writing the serving certificate Secret"),
        }
    }
    anyhow::bail!("the serving certificate Secret kept changing under us")
}

fn to_secret(contents: &Contents, settings: &Settings, existing: Option<&Secret>) -> Secret {
    let mut labels = existing
        .and_then(|s| s.metadata.labels.clone())
        .unwrap_or_default();
    labels.insert("app.kubernetes.io/managed-by".into(), "tollgate".into());
    let mut annotations = existing
        .and_then(|s| s.metadata.annotations.clone())
        .unwrap_or_default();
    annotations.retain(|k, _| !k.starts_with("tollgate.io/"));
    annotations.extend(contents.annotations.clone());
    Secret {
        metadata: ObjectMeta {
            name: Some(settings.secret_name.clone()),
            namespace: Some(settings.namespace.clone()),
            resource_version: existing.and_then(|s| s.metadata.resource_version.clone()),
            labels: Some(labels),
            annotations: Some(annotations),
            ..ObjectMeta::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            contents
                .data
                .iter()
                .map(|(k, v)| (k.clone(), ByteString(v.as_bytes().to_vec())))
                .collect(),
        ),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            namespace: "tollgate-system".into(),
            secret_name: "tollgate-webhook-tls".into(),
            dns_names: service_dns_names("tollgate-webhook", "tollgate-system"),
            ips: vec!["127.0.0.1".parse().unwrap()],
            ca_lifetime: Duration::days(30),
            leaf_lifetime: Duration::days(3),
            renew_at: 2.0 / 3.0,
            check_interval: std::time::Duration::from_secs(60),
        }
    }

    fn step(contents: &Contents, s: &Settings, at: OffsetDateTime) -> Option<(Contents, String)> {
        plan(Some(contents), s, at).unwrap()
    }

    fn leaf_serial(c: &Contents) -> String {
        inspect::inspect_pem(&c.data[CERT]).unwrap().serial
    }

    fn bundle_len(c: &Contents) -> usize {
        inspect::parse_pem_chain(&c.data[CA_CERT]).unwrap().len()
    }

    #[test]
    fn creates_a_ca_and_leaf_then_leaves_them_alone() {
        let s = settings();
        let now = OffsetDateTime::now_utc();
        let (first, reason) = plan(None, &s, now).unwrap().unwrap();
        assert!(reason.contains("no Secret"), "{reason}");
        assert!(check(&first, now).is_ok());
        assert_eq!(first.annotations[ROTATIONS], "1");
        let leaf = inspect::inspect_pem(&first.data[CERT]).unwrap();
        assert_eq!(leaf.dns_names, s.dns_names);
        assert_eq!(leaf.ip_addresses, vec!["127.0.0.1"]);
        assert!(step(&first, &s, now + Duration::hours(1)).is_none());
    }

    #[test]
    fn renews_the_leaf_at_two_thirds_with_the_same_ca() {
        let s = settings();
        let now = OffsetDateTime::now_utc();
        let (first, _) = plan(None, &s, now).unwrap().unwrap();
        assert!(step(&first, &s, now + Duration::hours(47)).is_none());
        let (second, reason) = step(&first, &s, now + Duration::hours(49)).unwrap();
        assert!(reason.contains("due for renewal"), "{reason}");
        assert_eq!(second.data[CA_CERT], first.data[CA_CERT]);
        assert_ne!(leaf_serial(&second), leaf_serial(&first));
        assert_eq!(second.annotations[ROTATIONS], "2");
    }

    #[test]
    fn rolls_the_ca_over_trusting_both_until_the_old_leaf_is_gone() {
        let s = settings();
        let t0 = OffsetDateTime::now_utc();
        let (mut c, _) = plan(None, &s, t0).unwrap().unwrap();
        // Renew the leaf until the CA is due (2/3 of 30 days).
        let mut t = t0;
        let rolled = loop {
            t += Duration::hours(12);
            let (next, reason) = match step(&c, &s, t) {
                Some(next) => next,
                None => continue,
            };
            if reason.contains("CA rollover") {
                break next;
            }
            assert!(reason.contains("due for renewal"), "{reason}");
            c = next;
        };
        assert!(t >= t0 + Duration::days(20) && t < t0 + Duration::days(21));
        assert_eq!(bundle_len(&rolled), 2);
        assert_eq!(leaf_serial(&rolled), leaf_serial(&c), "leaf kept at first");
        c = rolled;
        // Within the grace period nothing moves.
        assert!(step(&c, &s, t + Duration::minutes(1)).is_none());
        let (moved, reason) = step(&c, &s, t + Duration::minutes(4)).unwrap();
        assert!(reason.contains("moves to the new CA"), "{reason}");
        assert_eq!(bundle_len(&moved), 2, "old CA still trusted");
        let signing = tollgate_certs::tls::split_bundle(&moved.data[CA_CERT]).unwrap();
        let leaf = &inspect::parse_pem_chain(&moved.data[CERT]).unwrap()[0];
        assert!(
            inspect::check_signed_by(leaf, &signing[0])
                .unwrap()
                .is_none()
        );
        c = moved;
        let (pruned, reason) = step(&c, &s, t + Duration::minutes(8)).unwrap();
        assert!(reason.contains("old CA is no longer trusted"), "{reason}");
        assert_eq!(bundle_len(&pruned), 1);
        assert!(step(&pruned, &s, t + Duration::minutes(9)).is_none());
    }

    #[test]
    fn replaces_an_unusable_secret_and_reissues_for_new_names() {
        let s = settings();
        let now = OffsetDateTime::now_utc();
        let mut broken = Contents::default();
        broken.data.insert(CERT.into(), "junk".into());
        let (fixed, reason) = step(&broken, &s, now).unwrap();
        assert!(reason.contains("unusable"), "{reason}");
        assert!(check(&fixed, now).is_ok());

        let mut renamed = s.clone();
        renamed.dns_names.push("tollgate.example.com".into());
        let (reissued, reason) = step(&fixed, &renamed, now).unwrap();
        assert!(reason.contains("other hosts"), "{reason}");
        assert_eq!(reissued.data[CA_CERT], fixed.data[CA_CERT]);
    }
}
