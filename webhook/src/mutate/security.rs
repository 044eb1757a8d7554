//! Pod Security Standards "restricted" defaults, filled in only where the
//! user left a field unset: explicit values are for the validating policies
//! to judge, never overwritten here.

use k8s_openapi::api::core::v1::{
    Capabilities, Container, PodSecurityContext, PodSpec, SeccompProfile, SecurityContext,
};

use crate::config::SecurityDefaults;

pub fn apply(spec: &mut PodSpec, config: &SecurityDefaults) {
    let pod = spec
        .security_context
        .get_or_insert_with(PodSecurityContext::default);
    pod.run_as_non_root.get_or_insert(true);
    pod.seccomp_profile.get_or_insert_with(|| SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..Default::default()
    });
    let init = spec.init_containers.iter_mut().flatten();
    for container in spec.containers.iter_mut().chain(init) {
        harden(container, config);
    }
}

fn harden(container: &mut Container, config: &SecurityDefaults) {
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
    if !privileged && !sys_admin {
        sc.allow_privilege_escalation.get_or_insert(false);
    }
    let caps = sc.capabilities.get_or_insert_with(Capabilities::default);
    caps.drop.get_or_insert_with(|| vec!["ALL".into()]);
    if config.read_only_root_filesystem {
        sc.read_only_root_filesystem.get_or_insert(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> PodSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn fills_restricted_defaults_where_unset() {
        let mut s = spec(
            serde_json::json!({"containers": [{"name": "a"}], "initContainers": [{"name": "i"}]}),
        );
        apply(&mut s, &SecurityDefaults::default());
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
        );
        assert_eq!(serde_json::to_value(&s).unwrap(), original);
    }

    #[test]
    fn privileged_containers_keep_privilege_escalation_unset() {
        let mut s = spec(
            serde_json::json!({"containers": [{"name": "a", "securityContext": {"privileged": true}}]}),
        );
        apply(&mut s, &SecurityDefaults::default());
        let sc = s.containers[0].security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, None);
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop,
            Some(vec!["ALL".into()])
        );
    }
}
