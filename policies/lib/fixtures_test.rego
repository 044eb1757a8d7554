# Inputs for the library's unit tests: `input` as the webhook builds it,
# for a pod spec placed where each workload kind keeps it.
package tollgate.lib.fixtures

import rego.v1

meta := {"name": "trainer", "labels": {"app": "trainer", "team": "ml"}}

container := {
	"name": "app",
	"image": "registry.k8s.io/app:1.0",
	"resources": {"limits": {"cpu": "1", "memory": "1Gi"}},
}

spec := {"containers": [container]}

with_container(c) := {"containers": [object.union(container, c)]}

review(kind, pod_spec) := {
	"review": {
		"kind": {"group": group(kind), "version": "v1", "kind": kind},
		"namespace": "app-ml-team",
		"name": meta.name,
		"operation": "CREATE",
		"object": object_for(kind, pod_spec),
	},
	"parameters": {},
}

pod(pod_spec) := review("Pod", pod_spec)

group(kind) := "" if kind == "Pod"

group(kind) := "batch" if kind in {"Job", "CronJob"}

group(kind) := "apps" if not kind in {"Pod", "Job", "CronJob"}

object_for(kind, pod_spec) := {"kind": kind, "metadata": meta, "spec": pod_spec} if kind == "Pod"

object_for(kind, pod_spec) := {
	"kind": kind,
	"metadata": meta,
	"spec": {"template": {"metadata": meta, "spec": pod_spec}},
} if kind in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job"}

object_for(kind, pod_spec) := {
	"kind": kind,
	"metadata": meta,
	"spec": {"jobTemplate": {"spec": {"template": {"metadata": meta, "spec": pod_spec}}}},
} if kind == "CronJob"
