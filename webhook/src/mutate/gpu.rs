//! GPU placement: a pod whose containers request GPUs gets the GPU nodes'
//! tolerations and node selector; a pod that requests none gets neither.

use k8s_openapi::api::core::v1::{PodSpec, Toleration};

use crate::config::GpuConfig;

/// Whether any container asks for a non-zero amount of the GPU resource.
pub fn requests_gpu(spec: &PodSpec, resource: &str) -> bool {
    let init = spec.init_containers.iter().flatten();
    spec.containers.iter().chain(init).any(|c| {
        c.resources.as_ref().is_some_and(|r| {
            [&r.limits, &r.requests]
                .into_iter()
                .flatten()
                .any(|m| m.get(resource).is_some_and(|q| q.0.trim() != "0"))
        })
    })
}

pub fn apply(spec: &mut PodSpec, config: &GpuConfig) {
    if !requests_gpu(spec, &config.resource) {
        return;
    }
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for wanted in &config.tolerations {
        // The config's Toleration serializes to the pod spec's shape.
        let Ok(toleration) =
            serde_json::to_value(wanted).and_then(serde_json::from_value::<Toleration>)
        else {
            continue;
        };
        if !tolerations.contains(&toleration) {
            tolerations.push(toleration);
        }
    }
    if !config.node_selector.is_empty() {
        let selector = spec.node_selector.get_or_insert_with(Default::default);
        for (key, value) in &config.node_selector {
            selector.entry(key.clone()).or_insert_with(|| value.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(limits: serde_json::Value) -> PodSpec {
        serde_json::from_value(
            serde_json::json!({"containers": [{"name": "a", "resources": {"limits": limits}}]}),
        )
        .unwrap()
    }

    #[test]
    fn a_gpu_pod_gets_the_toleration_and_node_selector() {
        let mut s = spec(serde_json::json!({"nvidia.com/gpu": "2"}));
        apply(&mut s, &GpuConfig::default());
        let v = serde_json::to_value(&s).unwrap();
        assert_eq!(
            v["tolerations"],
            serde_json::json!([{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
        );
        assert_eq!(
            v["nodeSelector"],
            serde_json::json!({"nvidia.com/gpu.present": "true"})
        );
    }

    #[test]
    fn a_cpu_pod_and_a_zero_gpu_pod_get_neither() {
        for limits in [
            serde_json::json!({"cpu": "1"}),
            serde_json::json!({"nvidia.com/gpu": "0"}),
        ] {
            let mut s = spec(limits);
            let before = s.clone();
            apply(&mut s, &GpuConfig::default());
            assert_eq!(s, before);
        }
    }

    #[test]
    fn an_existing_toleration_and_selector_value_are_kept() {
        let mut s = spec(serde_json::json!({"nvidia.com/gpu": "1"}));
        s.node_selector = Some([("nvidia.com/gpu.present".to_owned(), "yes".to_owned())].into());
        apply(&mut s, &GpuConfig::default());
        apply(&mut s, &GpuConfig::default());
        assert_eq!(s.tolerations.as_ref().unwrap().len(), 1);
        assert_eq!(s.node_selector.unwrap()["nvidia.com/gpu.present"], "yes");
    }
}
