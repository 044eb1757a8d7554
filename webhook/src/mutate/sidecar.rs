//! Injecting the Tollgate proxy into workspace pods (and pods that opt in).
//!
//! Selection, in order: the annotation `tollgate.io/inject: "false"` always
//! wins; `hostNetwork` pods never get a proxy; then the annotation
//! `tollgate.io/inject: "true"`, the workspace label, or the namespace label
//! `tollgate.io/inject=enabled` select the pod.
//!
//! The injected container is rendered from the config; its hash goes into
//! the `tollgate.io/injected` annotation. A pod whose annotation matches is
//! left alone (reinvocation changes nothing); a pod injected from another
//! template has its proxy replaced, never doubled. Containers other
//! webhooks added are not touched.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, ContainerPort, EnvVar, EnvVarSource,
    HTTPGetAction, ObjectFieldSelector, PodSpec, Probe, ResourceRequirements, SeccompProfile,
    SecretVolumeSource, SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use crate::config::{OwnerSource, SidecarConfig};

pub const CONTAINER: &str = "tollgate-proxy";
pub const INJECT: &str = "tollgate.io/inject";
pub const INJECTED: &str = "tollgate.io/injected";
pub const APP_PORT: &str = "tollgate.io/app-port";
pub const PROXY_CPU: &str = "tollgate.io/proxy-cpu";
pub const PROXY_MEMORY: &str = "tollgate.io/proxy-memory";
pub const PROXY_PROFILE: &str = "tollgate.io/proxy-profile";
pub const SHARING: &str = "tollgate.io/workspace-sharing";
const CERT_VOLUME: &str = "tollgate-proxy-certs";
const CONFIG_VOLUME: &str = "tollgate-proxy-config";

/// Why a pod got no proxy, or that it got one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Injected,
    /// Already injected from the current template.
    Current,
    Skipped(&'static str),
}

/// An annotation that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadAnnotation(pub String);

/// Whether the pod is selected, or why not.
pub fn selected(
    meta: &ObjectMeta,
    spec: &PodSpec,
    namespace_labels: Option<&BTreeMap<String, String>>,
    config: &SidecarConfig,
) -> Result<(), &'static str> {
    let annotation = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(INJECT))
        .map(String::as_str);
    if annotation == Some("false") {
        return Err("opted out");
    }
    if spec.host_network == Some(true) {
        return Err("hostNetwork");
    }
    let workspace = meta
        .labels
        .as_ref()
        .and_then(|l| l.get(&config.workspace_label))
        .is_some_and(|v| v != "false");
    let namespace = namespace_labels
        .and_then(|l| l.get(INJECT))
        .is_some_and(|v| v == "enabled");
    if annotation == Some("true") || workspace || namespace {
        Ok(())
    } else {
        Err("not selected")
    }
}

/// Who a workspace belongs to, for the proxy's environment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// `None`: not a workspace (a pod that opted in, say).
    pub owner: Option<String>,
    pub team: Option<String>,
    /// `team`, from `tollgate.io/workspace-sharing`.
    pub sharing: Option<String>,
}

/// Whether `meta` is a workspace's (the workspace label, not "false").
pub fn is_workspace(meta: &ObjectMeta, config: &SidecarConfig) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(&config.workspace_label))
        .is_some_and(|v| v != "false")
}

/// A workspace's owner and sharing, or why it cannot be admitted. `what`
/// names the object (`Deployment "code-alice"`); `team` is its
/// namespace's. `Ok(None)`: not a workspace.
pub fn ownership(
    meta: &ObjectMeta,
    config: &SidecarConfig,
    team: Option<&str>,
    what: &str,
) -> Result<Option<Ownership>, BadAnnotation> {
    if !is_workspace(meta, config) || annotation(meta, INJECT) == Some("false") {
        return Ok(None);
    }
    let source = config.owner_source();
    let (value, how) = match &source {
        OwnerSource::Label(key) => (
            meta.labels
                .as_ref()
                .and_then(|l| l.get(key))
                .map(String::as_str),
            format!("the label {key}"),
        ),
        OwnerSource::Annotation(key) => (annotation(meta, key), format!("the annotation {key}")),
    };
    let value = value.map(str::trim).unwrap_or("");
    // "true" marked a workspace before workspaces had owners: it names nobody.
    if value.is_empty() || value == "true" {
        let example = match &source {
            OwnerSource::Label(key) => format!("{key}: ml-user-1"),
            OwnerSource::Annotation(key) => format!("{key}: ml-user-1"),
        };
        return Err(BadAnnotation(format!(
            "{what} is a workspace (label {}) but names no owner, so nobody could be let in: \
             set {how} to the owner's user name (for example `{example}`); \
             to share it with the namespace's team add the annotation `{SHARING}: team`",
            config.workspace_label
        )));
    }
    if value.len() > 253 || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(BadAnnotation(format!(
            "{what}: {how}: {value:?} is not a user name (no spaces, at most 253 characters)"
        )));
    }
    let sharing = match annotation(meta, SHARING).map(str::trim) {
        None | Some("") | Some("none") => None,
        Some("team") if team.is_none() => {
            return Err(BadAnnotation(format!(
                "{what}: annotation {SHARING}: \"team\", but its namespace belongs to no team"
            )));
        }
        Some("team") => Some("team".to_owned()),
        Some(other) => {
            return Err(BadAnnotation(format!(
                "{what}: annotation {SHARING}: {other:?} is not a sharing mode (team or none)"
            )));
        }
    };
    Ok(Some(Ownership {
        owner: Some(value.to_owned()),
        team: team.map(str::to_owned),
        sharing,
    }))
}

fn quantity_ok(value: &str) -> bool {
    // Kubernetes quantities: a decimal number and an optional suffix.
    let re = regex::Regex::new(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$");
    re.is_ok_and(|re| re.is_match(value))
}

fn dns_label_ok(value: &str) -> bool {
    let re = regex::Regex::new(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$");
    re.is_ok_and(|re| re.is_match(value))
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

/// The proxy container for this pod: the config's template with the
/// pod's overrides (`tollgate.io/proxy-cpu`, `-memory`, `-profile`,
/// `tollgate.io/app-port`), each checked.
pub fn render(
    meta: &ObjectMeta,
    spec: &PodSpec,
    config: &SidecarConfig,
    ownership: &Ownership,
) -> Result<Container, BadAnnotation> {
    let mut requests: BTreeMap<String, Quantity> = config
        .resources
        .requests
        .iter()
        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
        .collect();
    let mut limits: BTreeMap<String, Quantity> = config
        .resources
        .limits
        .iter()
        .map(|(k, v)| (k.clone(), Quantity(v.clone())))
        .collect();
    for (key, resource) in [(PROXY_CPU, "cpu"), (PROXY_MEMORY, "memory")] {
        if let Some(value) = annotation(meta, key) {
            if !quantity_ok(value) {
                return Err(BadAnnotation(format!(
                    "annotation {key}: {value:?} is not a Kubernetes quantity (e.g. 250m, 128Mi)"
                )));
            }
            requests.insert(resource.into(), Quantity(value.into()));
            limits.insert(resource.into(), Quantity(value.into()));
        }
    }
    let profile = match annotation(meta, PROXY_PROFILE) {
        Some(p) if !dns_label_ok(p) => {
            return Err(BadAnnotation(format!(
                "annotation {PROXY_PROFILE}: {p:?} is not a profile name (lowercase letters, digits and '-')"
            )));
        }
        Some(p) => p.to_owned(),
        None => "default".to_owned(),
    };
    let app_port = match annotation(meta, APP_PORT) {
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port.to_string(),
            _ => {
                return Err(BadAnnotation(format!(
                    "annotation {APP_PORT}: {p:?} is not a port number (1-65535)"
                )));
            }
        },
        None => spec
            .containers
            .iter()
            .filter(|c| c.name != CONTAINER)
            .flat_map(|c| c.ports.iter().flatten())
            .next()
            .map(|p| p.container_port.to_string())
            .unwrap_or_default(),
    };
    let env = |name: &str, value: &str| EnvVar {
        name: name.into(),
        value: Some(value.into()),
        ..Default::default()
    };
    let field = |name: &str, path: &str| EnvVar {
        name: name.into(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: path.into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let port = |name: &str, number: u16| ContainerPort {
        name: Some(name.into()),
        container_port: i32::from(number),
        protocol: Some("TCP".into()),
        ..Default::default()
    };
    let ports = &config.ports;
    let mut vars = vec![
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env("TOLLGATE_APP_PORT", &app_port),
        env("TOLLGATE_INBOUND_PORT", &ports.https.to_string()),
        env("TOLLGATE_ADMIN_PORT", &ports.admin.to_string()),
        env("TOLLGATE_OUTBOUND_PORT", &ports.outbound.to_string()),
        env("TOLLGATE_PROFILE", &profile),
    ];
    for (name, value) in [
        ("TOLLGATE_WORKSPACE_OWNER", &ownership.owner),
        ("TOLLGATE_TEAM", &ownership.team),
        ("TOLLGATE_WORKSPACE_SHARING", &ownership.sharing),
    ] {
        if let Some(value) = value {
            vars.push(env(name, value));
        }
    }
    Ok(Container {
        name: CONTAINER.into(),
        image: Some(config.image.clone()),
        args: Some(vec![
            "--config".into(),
            "/etc/tollgate-proxy/config/proxy.yaml".into(),
        ]),
        ports: Some(vec![
            port("tollgate-https", ports.https),
            port("tollgate-admin", ports.admin),
        ]),
        env: Some(vars),
        resources: Some(ResourceRequirements {
            requests: Some(requests),
            limits: Some(limits),
            ..Default::default()
        }),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/ready".into()),
                port: IntOrString::String("tollgate-admin".into()),
                ..Default::default()
            }),
            period_seconds: Some(5),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            privileged: Some(false),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Default::default()
            }),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: CERT_VOLUME.into(),
                mount_path: "/etc/tollgate-proxy/certs".into(),
                read_only: Some(true),
                ..Default::default()
            },
            VolumeMount {
                name: CONFIG_VOLUME.into(),
                mount_path: "/etc/tollgate-proxy/config".into(),
                read_only: Some(true),
                ..Default::default()
            },
        ]),
        ..Default::default()
    })
}

fn cert_volume(config: &SidecarConfig) -> Volume {
    // The config check proved that certVolume makes a Volume.
    let custom = config.cert_volume.as_ref().and_then(|source| {
        let mut volume = source.clone();
        volume
            .as_object_mut()?
            .insert("name".into(), CERT_VOLUME.into());
        serde_json::from_value::<Volume>(volume).ok()
    });
    custom.unwrap_or_else(|| Volume {
        name: CERT_VOLUME.into(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(config.cert_secret.clone()),
            ..Default::default()
        }),
        ..Default::default()
    })
}

fn volumes(config: &SidecarConfig) -> [Volume; 2] {
    [
        cert_volume(config),
        Volume {
            name: CONFIG_VOLUME.into(),
            config_map: Some(ConfigMapVolumeSource {
                name: config.config_map.clone(),
                optional: Some(true),
                ..Default::default()
            }),
            ..Default::default()
        },
    ]
}

/// A short, stable fingerprint of what is injected (SHA-256 of its JSON).
fn fingerprint(container: &Container, native: bool, config: &SidecarConfig) -> String {
    let text =
        serde_json::json!({"container": container, "native": native, "volumes": volumes(config)})
            .to_string();
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Injects (or re-injects) the proxy. `native` is the resolved mode;
/// `team` the namespace's.
pub fn apply(
    meta: &mut ObjectMeta,
    spec: &mut PodSpec,
    namespace_labels: Option<&BTreeMap<String, String>>,
    config: &SidecarConfig,
    native: bool,
    team: Option<&str>,
) -> Result<Decision, BadAnnotation> {
    if let Err(why) = selected(meta, spec, namespace_labels, config) {
        return Ok(Decision::Skipped(why));
    }
    let what = format!(
        "Pod {:?}",
        meta.name
            .as_deref()
            .or(meta.generate_name.as_deref())
            .unwrap_or("")
    );
    let ownership = ownership(meta, config, team, &what)?.unwrap_or(Ownership {
        team: team.map(str::to_owned),
        ..Ownership::default()
    });
    let mut container = render(meta, spec, config, &ownership)?;
    let hash = fingerprint(&container, native, config);
    let has_proxy = spec.containers.iter().any(|c| c.name == CONTAINER)
        || spec
            .init_containers
            .iter()
            .flatten()
            .any(|c| c.name == CONTAINER);
    if has_proxy && annotation(meta, INJECTED) == Some(hash.as_str()) {
        return Ok(Decision::Current);
    }
    // Another template's proxy: replace it, never add a second one.
    spec.containers.retain(|c| c.name != CONTAINER);
    if let Some(init) = spec.init_containers.as_mut() {
        init.retain(|c| c.name != CONTAINER);
    }
    let vols = spec.volumes.get_or_insert_with(Vec::new);
    vols.retain(|v| v.name != CERT_VOLUME && v.name != CONFIG_VOLUME);
    vols.extend(volumes(config));
    if native {
        container.restart_policy = Some("Always".into());
        spec.init_containers
            .get_or_insert_with(Vec::new)
            .insert(0, container);
    } else {
        spec.containers.push(container);
    }
    meta.annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(INJECTED.into(), hash);
    Ok(Decision::Injected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(meta: serde_json::Value, spec: serde_json::Value) -> (ObjectMeta, PodSpec) {
        (
            serde_json::from_value(meta).unwrap(),
            serde_json::from_value(spec).unwrap(),
        )
    }

    fn app() -> serde_json::Value {
        serde_json::json!({"containers": [{"name": "notebook", "image": "x:1", "ports": [{"containerPort": 8888}]}]})
    }

    fn decide(
        meta: serde_json::Value,
        spec: serde_json::Value,
        ns: Option<&str>,
    ) -> Result<(), &'static str> {
        let (m, s) = pod(meta, spec);
        let labels = ns.map(|v| BTreeMap::from([(INJECT.to_owned(), v.to_owned())]));
        selected(&m, &s, labels.as_ref(), &SidecarConfig::default())
    }

    #[test]
    fn selection_precedence() {
        let workspace = serde_json::json!({"labels": {"tollgate.io/workspace": "ml-user-1"}});
        let opt_in = serde_json::json!({"annotations": {"tollgate.io/inject": "true"}});
        let opt_out = serde_json::json!({"labels": {"tollgate.io/workspace": "ml-user-1"}, "annotations": {"tollgate.io/inject": "false"}});
        let plain = serde_json::json!({});
        assert_eq!(decide(workspace.clone(), app(), None), Ok(()));
        assert_eq!(decide(opt_in, app(), None), Ok(()));
        assert_eq!(decide(plain.clone(), app(), Some("enabled")), Ok(()));
        assert_eq!(
            decide(plain.clone(), app(), Some("disabled")),
            Err("not selected")
        );
        assert_eq!(decide(plain, app(), None), Err("not selected"));
        // Opting out beats the label and the namespace.
        assert_eq!(decide(opt_out, app(), Some("enabled")), Err("opted out"));
        // A workspace label of "false" is no workspace.
        assert_eq!(
            decide(
                serde_json::json!({"labels": {"tollgate.io/workspace": "false"}}),
                app(),
                None
            ),
            Err("not selected")
        );
        // hostNetwork pods never, even when asked.
        let mut host = app();
        host["hostNetwork"] = true.into();
        assert_eq!(decide(workspace, host, Some("enabled")), Err("hostNetwork"));
    }

    fn inject(
        meta: &mut ObjectMeta,
        spec: &mut PodSpec,
        config: &SidecarConfig,
        native: bool,
    ) -> Decision {
        apply(meta, spec, None, config, native, Some("team-a")).unwrap()
    }

    #[test]
    fn plain_mode_appends_a_container_and_twice_is_once() {
        let (mut m, mut s) = pod(
            serde_json::json!({"labels": {"tollgate.io/workspace": "ml-user-1"}}),
            app(),
        );
        assert_eq!(
            inject(&mut m, &mut s, &SidecarConfig::default(), false),
            Decision::Injected
        );
        assert_eq!(s.containers.len(), 2);
        assert_eq!(s.containers[1].name, CONTAINER);
        let env = s.containers[1].env.as_ref().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "TOLLGATE_APP_PORT" && e.value.as_deref() == Some("8888"))
        );
        let (m1, s1) = (m.clone(), s.clone());
        assert_eq!(
            inject(&mut m, &mut s, &SidecarConfig::default(), false),
            Decision::Current
        );
        assert_eq!((m, s), (m1, s1));
    }

    #[test]
    fn native_mode_is_a_restartable_init_container() {
        let (mut m, mut s) = pod(
            serde_json::json!({"annotations": {"tollgate.io/inject": "true"}}),
            app(),
        );
        inject(&mut m, &mut s, &SidecarConfig::default(), true);
        assert_eq!(s.containers.len(), 1);
        let init = s.init_containers.as_ref().unwrap();
        assert_eq!(init[0].name, CONTAINER);
        assert_eq!(init[0].restart_policy.as_deref(), Some("Always"));
    }

    #[test]
    fn a_template_change_replaces_the_proxy() {
        let (mut m, mut s) = pod(
            serde_json::json!({"labels": {"tollgate.io/workspace": "ml-user-1"}}),
            app(),
        );
        inject(&mut m, &mut s, &SidecarConfig::default(), false);
        let old = m.annotations.as_ref().unwrap()[INJECTED].clone();
        let newer = SidecarConfig {
            image: "ghcr.io/tollgate-dev/tollgate-proxy:0.2.0".into(),
            ..Default::default()
        };
        assert_eq!(inject(&mut m, &mut s, &newer, false), Decision::Injected);
        let proxies: Vec<_> = s
            .containers
            .iter()
            .filter(|c| c.name == CONTAINER)
            .collect();
        assert_eq!(proxies.len(), 1);
        assert_eq!(
            proxies[0].image.as_deref(),
            Some("ghcr.io/tollgate-dev/tollgate-proxy:0.2.0")
        );
        assert_ne!(m.annotations.as_ref().unwrap()[INJECTED], old);
        assert_eq!(s.volumes.as_ref().unwrap().len(), 2);
    }

    #[test]
    fn other_webhooks_containers_are_left_alone() {
        let mut spec = app();
        spec["containers"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"name": "istio-proxy", "image": "istio/proxyv2:1.22.0"}));
        let (mut m, mut s) = pod(
            serde_json::json!({"labels": {"tollgate.io/workspace": "ml-user-1"}}),
            spec,
        );
        inject(&mut m, &mut s, &SidecarConfig::default(), false);
        let names: Vec<_> = s.containers.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["notebook", "istio-proxy", CONTAINER]);
    }

    #[test]
    fn the_certificate_can_come_from_any_volume_source() {
        let config = SidecarConfig {
            cert_volume: Some(
                serde_json::json!({"csi": {"driver": "csi.cert-manager.io", "readOnly": true, "volumeAttributes": {"csi.cert-manager.io/issuer-name": "tollgate"}}}),
            ),
            ..Default::default()
        };
        let (mut m, mut s) = pod(
            serde_json::json!({"labels": {"tollgate.io/workspace": "ml-user-1"}}),
            app(),
        );
        inject(&mut m, &mut s, &config, false);
        let cert = &s.volumes.as_ref().unwrap()[0];
        assert_eq!(cert.name, CERT_VOLUME);
        assert_eq!(cert.csi.as_ref().unwrap().driver, "csi.cert-manager.io");
        assert!(cert.secret.is_none());
    }

    #[test]
    fn per_pod_overrides_are_checked() {
        let meta = |k: &str, v: &str| serde_json::json!({"labels": {"tollgate.io/workspace": "ml-user-1"}, "annotations": {k: v}});
        let (mut m, mut s) = pod(meta(PROXY_CPU, "250m"), app());
        inject(&mut m, &mut s, &SidecarConfig::default(), false);
        let r = s.containers[1].resources.as_ref().unwrap();
        assert_eq!(r.limits.as_ref().unwrap()["cpu"], Quantity("250m".into()));
        for (key, value, message) in [
            (
                PROXY_CPU,
                "lots",
                "annotation tollgate.io/proxy-cpu: \"lots\" is not a Kubernetes quantity (e.g. 250m, 128Mi)",
            ),
            (
                PROXY_PROFILE,
                "Strict_Profile",
                "annotation tollgate.io/proxy-profile: \"Strict_Profile\" is not a profile name (lowercase letters, digits and '-')",
            ),
            (
                APP_PORT,
                "http",
                "annotation tollgate.io/app-port: \"http\" is not a port number (1-65535)",
            ),
        ] {
            let (mut m, mut s) = pod(meta(key, value), app());
            assert_eq!(
                apply(&mut m, &mut s, None, &SidecarConfig::default(), false, None),
                Err(BadAnnotation(message.into()))
            );
        }
    }

    fn env_of(c: &Container) -> BTreeMap<String, String> {
        c.env
            .iter()
            .flatten()
            .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
            .collect()
    }

    #[test]
    fn the_owner_and_team_reach_the_proxy() {
        let (mut m, mut s) = pod(
            serde_json::json!({"name": "ws", "labels": {"tollgate.io/workspace": "ml-user-1"},
                               "annotations": {"tollgate.io/workspace-sharing": "team"}}),
            app(),
        );
        inject(&mut m, &mut s, &SidecarConfig::default(), false);
        let env = env_of(&s.containers[1]);
        assert_eq!(env["TOLLGATE_WORKSPACE_OWNER"], "ml-user-1");
        assert_eq!(env["TOLLGATE_TEAM"], "team-a");
        assert_eq!(env["TOLLGATE_WORKSPACE_SHARING"], "team");
        // A pod that opted in is no workspace: the team, no owner.
        let (mut m, mut s) = pod(
            serde_json::json!({"annotations": {"tollgate.io/inject": "true"}}),
            app(),
        );
        inject(&mut m, &mut s, &SidecarConfig::default(), false);
        let env = env_of(&s.containers[1]);
        assert_eq!(env.get("TOLLGATE_TEAM").map(String::as_str), Some("team-a"));
        assert!(!env.contains_key("TOLLGATE_WORKSPACE_OWNER"));
    }

    #[test]
    fn the_owner_can_come_from_an_annotation() {
        let config = SidecarConfig {
            owner_from: Some(OwnerSource::Annotation("tollgate.io/owner".into())),
            ..Default::default()
        };
        let (mut m, mut s) = pod(
            serde_json::json!({"labels": {"tollgate.io/workspace": "true"},
                               "annotations": {"tollgate.io/owner": "ml.user@corp.io"}}),
            app(),
        );
        apply(&mut m, &mut s, None, &config, false, None).unwrap();
        assert_eq!(
            env_of(&s.containers[1])["TOLLGATE_WORKSPACE_OWNER"],
            "ml.user@corp.io"
        );
        let (mut m, mut s) = pod(
            serde_json::json!({"name": "ws", "labels": {"tollgate.io/workspace": "ml-user-1"}}),
            app(),
        );
        let e = apply(&mut m, &mut s, None, &config, false, None).unwrap_err();
        assert!(
            e.0.contains("set the annotation tollgate.io/owner"),
            "{}",
            e.0
        );
    }

    #[test]
    fn a_workspace_without_an_owner_is_refused_with_how_to_name_one() {
        for labels in [
            serde_json::json!({"tollgate.io/workspace": "true"}),
            serde_json::json!({"tollgate.io/workspace": ""}),
        ] {
            let (mut m, mut s) = pod(serde_json::json!({"name": "ws", "labels": labels}), app());
            let e = apply(
                &mut m,
                &mut s,
                None,
                &SidecarConfig::default(),
                false,
                Some("t"),
            );
            assert_eq!(
                e,
                Err(BadAnnotation(
                    "Pod \"ws\" is a workspace (label tollgate.io/workspace) but names no owner, \
                     so nobody could be let in: set the label tollgate.io/workspace to the owner's \
                     user name (for example `tollgate.io/workspace: ml-user-1`); to share it with \
                     the namespace's team add the annotation `tollgate.io/workspace-sharing: team`"
                        .into()
                ))
            );
            assert!(s.containers.iter().all(|c| c.name != CONTAINER));
        }
        for (annotation, message) in [
            (
                "everyone",
                "\"everyone\" is not a sharing mode (team or none)",
            ),
            ("team", "but its namespace belongs to no team"),
        ] {
            let (mut m, mut s) = pod(
                serde_json::json!({"name": "ws", "labels": {"tollgate.io/workspace": "a"},
                                   "annotations": {SHARING: annotation}}),
                app(),
            );
            let e =
                apply(&mut m, &mut s, None, &SidecarConfig::default(), false, None).unwrap_err();
            assert!(e.0.contains(message), "{}", e.0);
        }
    }
}
