//! Default requests and limits for containers that declare none, from the
//! team's configuration, so that Pods fit the team's quota.
//!
//! Per resource: a missing request takes the container's own limit, else
//! the default; a missing limit takes the container's own request, else
//! the default. So a default never contradicts what the user set (a request
//! above its limit would be refused).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, PodSpec, ResourceRequirements};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::config::ResourceDefaults;

pub fn apply(spec: &mut PodSpec, defaults: &ResourceDefaults) {
    let init = spec.init_containers.iter_mut().flatten();
    for container in spec.containers.iter_mut().chain(init) {
        fill(container, defaults);
    }
}

fn fill(container: &mut Container, defaults: &ResourceDefaults) {
    let resources = container
        .resources
        .get_or_insert_with(ResourceRequirements::default);
    let user_requests = resources.requests.clone().unwrap_or_default();
    let user_limits = resources.limits.clone().unwrap_or_default();
    let set =
        |map: &mut Option<BTreeMap<String, Quantity>>, name: &str, value: Option<&Quantity>| {
            if let Some(value) = value {
                map.get_or_insert_with(BTreeMap::new)
                    .entry(name.to_owned())
                    .or_insert_with(|| value.clone());
            }
        };
    for (name, default) in &defaults.requests {
        let value = user_limits
            .get(name)
            .cloned()
            .unwrap_or_else(|| Quantity(default.clone()));
        set(&mut resources.requests, name, Some(&value));
    }
    for (name, default) in &defaults.limits {
        let value = user_requests
            .get(name)
            .cloned()
            .unwrap_or_else(|| Quantity(default.clone()));
        set(&mut resources.limits, name, Some(&value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> ResourceDefaults {
        ResourceDefaults {
            requests: BTreeMap::from([
                ("cpu".into(), "100m".into()),
                ("memory".into(), "128Mi".into()),
            ]),
            limits: BTreeMap::from([("cpu".into(), "1".into()), ("memory".into(), "1Gi".into())]),
        }
    }

    fn run(container: serde_json::Value) -> serde_json::Value {
        let mut s: PodSpec =
            serde_json::from_value(serde_json::json!({"containers": [container]})).unwrap();
        apply(&mut s, &defaults());
        serde_json::to_value(&s.containers[0].resources).unwrap()
    }

    #[test]
    fn a_container_without_resources_gets_the_defaults() {
        assert_eq!(
            run(serde_json::json!({"name": "a"})),
            serde_json::json!({"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}})
        );
    }

    #[test]
    fn defaults_never_contradict_what_the_user_set() {
        assert_eq!(
            run(
                serde_json::json!({"name": "a", "resources": {"requests": {"cpu": "4"}, "limits": {"memory": "64Mi"}}})
            ),
            serde_json::json!({"requests": {"cpu": "4", "memory": "64Mi"}, "limits": {"cpu": "4", "memory": "64Mi"}})
        );
    }

    #[test]
    fn gpu_and_other_resources_are_left_alone() {
        assert_eq!(
            run(
                serde_json::json!({"name": "a", "resources": {"limits": {"nvidia.com/gpu": "1", "cpu": "2", "memory": "8Gi"}, "requests": {"cpu": "2", "memory": "8Gi"}}})
            ),
            serde_json::json!({"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"nvidia.com/gpu": "1", "cpu": "2", "memory": "8Gi"}})
        );
    }
}
