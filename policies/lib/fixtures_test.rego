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

# A pod that meets `restricted` at every version: what each pod_security
# test starts from.
restricted_spec := {
	"securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
	"containers": [object.union(container, {"securityContext": {
		"allowPrivilegeEscalation": false,
		"capabilities": {"drop": ["ALL"]},
	}})],
}

# `restricted_spec` with `patch` merged in (objects merge, the rest replaces).
restricted_with(patch) := object.union(restricted_spec, patch)

# `restricted_spec`'s container with `patch` merged in.
restricted_container(patch) := restricted_with({"containers": [object.union(restricted_spec.containers[0], patch)]})

# The input for a Pod of `pod_spec` in a namespace whose modes are `levels`
# ({"enforce": "restricted", "warn": ...}) at version v1.`minor`.
pss(pod_spec, levels, minor) := object.union(pod(pod_spec), {"namespace": {"podSecurity": {mode: lv |
	some mode, level in levels
	lv := {"level": level, "version": sprintf("v1.%d", [minor]), "minor": minor}
}}})

# Enforced at `level`, latest (v1.37).
enforced(pod_spec, level) := pss(pod_spec, {"enforce": level}, 37)
