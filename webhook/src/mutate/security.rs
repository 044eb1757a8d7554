//! Pod Security Standards "restricted" defaults, filled in only where the
//! user left a field unset, and only those the namespace's strictest level
//! and version require (`pod_security.rs`): explicit values are for the
//! validating `pod_security` policies to judge, never overwritten here. A
//! pod that sets something incompatible (`runAsUser: 0`, a capability
//! added, privilege escalation allowed) is not made to pass: the policies
//! deny it with the check's message.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext,
};

use crate::config::SecurityDefaults;
use crate::pod_security::{Level, LevelVersion};

/// What `restricted` at one version requires of a pod, as PSA's checks
/// (policies/pod_security/) judge it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Required {
    run_as_non_root: bool,
    seccomp: bool,
    no_privilege_escalation: bool,
    drop_all: bool,
}

impl Required {
    fn of(spec: &PodSpec, target: LevelVersion) -> Required {
        let minor = target.version.effective_minor();
        let restricted = target.level == Level::Restricted;
        // Windows pods: from v1.25 the Linux-only checks pass them, and the
        // apiserver refuses these fields on them at any version.
        let linux = spec.os.as_ref().is_none_or(|os| os.name != "windows");
        // A pod in its own user namespace may run as root inside it (v1.35).
        let user_namespace = spec.host_users == Some(false) && minor >= 35;
        Required {
            run_as_non_root: restricted && !user_namespace && !sets_root(spec),
            seccomp: restricted && linux && minor >= 19,
            no_privilege_escalation: restricted && linux && minor >= 8,
            drop_all: restricted && linux && minor >= 22,
        }
    }
}

/// Whether the pod or a container asks for UID 0: `runAsNonRoot: true`
/// beside it would only fail at the kubelet; left unset, the policies deny
/// the pod at once with both checks' messages.
fn sets_root(spec: &PodSpec) -> bool {
    let pod = spec.security_context.as_ref().and_then(|sc| sc.run_as_user);
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| c.security_context.as_ref()?.run_as_user);
    std::iter::once(pod)
        .flatten()
        .chain(containers)
        .any(|uid| uid == 0)
}

pub fn apply(spec: &mut PodSpec, config: &SecurityDefaults, target: LevelVersion) {
    let required = Required::of(spec, target);
    if required.run_as_non_root || required.seccomp {
        let pod = spec
            .security_context
            .get_or_insert_with(PodSecurityContext::default);
        if required.run_as_non_root {
            pod.run_as_non_root.get_or_insert(true);
        }
        if required.seccomp {
            pod.seccomp_profile.get_or_insert_with(|| SeccompProfile {
                type_: "RuntimeDefault".into(),
                ..Default::default()
            });
        }
    }
    let init = spec.init_containers.iter_mut().flatten();
    for container in spec.containers.iter_mut().chain(init) {
        harden(container, config, required);
    }
}

fn harden(container: &mut Container, config: &SecurityDefaults, required: Required) {
    if !(required.no_privilege_escalation || required.drop_all || config.read_only_root_filesystem)
    {
        return;
    }
    let sc = container
        .security_context
        .get_or_insert_with(SecurityContext::default);
    // The apiserver refuses allowPrivilegeEscalation: false beside
    // privileged: true or CAP_SYS_ADMIN; those containers are the policies'.
    let privileged = sc.privileged == Some(true);
    let sys_admin = sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .is_some_and(|add| add.iter().any(|c| c == "SYS_ADMIN" || c == "CAP_SYS_ADMIN"));
    if required.no_privilege_escalation && !privileged && !sys_admin {
        sc.allow_privilege_escalation.get_or_insert(false);
    }
    if required.drop_all {
        let caps = sc.capabilities.get_or_insert_with(Capabilities::default);
        caps.drop.get_or_insert_with(|| vec!["ALL".into()]);
    }
    if config.read_only_root_filesystem {
        sc.read_only_root_filesystem.get_or_insert(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_security::Version;

    const RESTRICTED: LevelVersion = LevelVersion::RESTRICTED_LATEST;

    fn spec(json: serde_json::Value) -> PodSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn fills_restricted_defaults_where_unset() {
        let mut s = spec(
            serde_json::json!({"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]}),
        );
        apply(&mut s, &SecurityDefaults::default(), RESTRICTED);
        assert_eq!(
            serde_json::to_value(&s).unwrap(),
            serde_json::json!({
                "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
                "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
                "initContainers": [{"name": "i", "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}}}],
            })
        );
    }

    #[test]
    fn never_overwrites_what_the_user_set() {
        let original = serde_json::json!({
            "securityContext": {"runAsNonRoot": false, "seccompProfile": {"type": "Unconfined"}},
            "containers": [{"name": "a", "securityContext": {
                "allowPrivilegeEscalation": true,
                "readOnlyRootFilesystem": false,
                "capabilities": {"drop": ["NET_RAW"]}
            }}],
        });
        let mut s = spec(original.clone());
        apply(
            &mut s,
            &SecurityDefaults {
                read_only_root_filesystem: true,
            },
            RESTRICTED,
        );
        assert_eq!(serde_json::to_value(&s).unwrap(), original);
    }

    #[test]
    fn privileged_containers_keep_privilege_escalation_unset() {
        let mut s = spec(
            serde_json::json!({"containers": [{"name": "a", "securityContext": {"privileged": true}}]}),
        );
        apply(&mut s, &SecurityDefaults::default(), RESTRICTED);
        let sc = s.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, None);
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".into()])
        );
    }

    fn filled(json: serde_json::Value, target: LevelVersion) -> serde_json::Value {
        let mut s = spec(json);
        apply(&mut s, &SecurityDefaults::default(), target);
        serde_json::to_value(&s).unwrap()
    }

    #[test]
    fn below_restricted_nothing_is_filled() {
        let plain = serde_json::json!({"containers": [{"name": "a"}]});
        for level in [Level::Privileged, Level::Baseline] {
            let target = LevelVersion {
                level,
                version: Version::LATEST,
            };
            assert_eq!(filled(plain.clone(), target), plain);
        }
    }

    #[test]
    fn an_older_version_gets_only_what_it_requires() {
        let target = LevelVersion {
            level: Level::Restricted,
            version: Version::v1(18),
        };
        assert_eq!(
            filled(serde_json::json!({"containers": [{"name": "a"}]}), target),
            serde_json::json!({
                "securityContext": {"runAsNonRoot": true},
                "containers": [{"name": "a", "securityContext": {"allowPrivilegeEscalation": false}}],
            })
        );
    }

    #[test]
    fn windows_pods_get_no_linux_only_fields() {
        let windows = serde_json::json!({"os": {"name": "windows"}, "containers": [{"name": "a"}]});
        assert_eq!(
            filled(windows, RESTRICTED),
            serde_json::json!({
                "os": {"name": "windows"},
                "securityContext": {"runAsNonRoot": true},
                "containers": [{"name": "a"}],
            })
        );
    }

    #[test]
    fn a_pod_asking_for_root_is_left_for_the_policies_to_deny() {
        for root in [
            serde_json::json!({"securityContext": {"runAsUser": 0}, "containers": [{"name": "a"}]}),
            serde_json::json!({"containers": [{"name": "a", "securityContext": {"runAsUser": 0}}]}),
        ] {
            let out = filled(root, RESTRICTED);
            assert!(
                out.pointer("/securityContext/runAsNonRoot").is_none(),
                "{out}"
            );
        }
    }

    #[test]
    fn a_user_namespace_pod_may_run_as_root_inside_it() {
        let out = filled(
            serde_json::json!({"hostUsers": false, "containers": [{"name": "a"}]}),
            RESTRICTED,
        );
        assert!(
            out.pointer("/securityContext/runAsNonRoot").is_none(),
            "{out}"
        );
        assert_eq!(
            out["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
    }
}
