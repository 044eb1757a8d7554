# Helpers shared by the bundled policies: where a workload keeps its pod
# spec, and every container in it. Not a policy itself (no `violation`).
package tollgate.lib.workloads

import rego.v1

# Kinds whose objects are, or contain, a pod template.
kinds := [
	"Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet",
	"ReplicationController", "Job", "CronJob",
]

template_kinds := {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "ReplicationController", "Job"}

obj := input.review.object

kind := input.review.kind.kind

# The object's name; generateName for objects that have no name yet.
name := obj.metadata.name if obj.metadata.name != ""

name := sprintf("%s*", [obj.metadata.generateName]) if {
	not obj.metadata.name
	obj.metadata.generateName
}

pod_spec := obj.spec if kind == "Pod"

pod_spec := obj.spec.template.spec if kind in template_kinds

pod_spec := obj.spec.jobTemplate.spec.template.spec if kind == "CronJob"

# The metadata of the pod, or of the pod template.
pod_metadata := object.get(obj, "metadata", {}) if kind == "Pod"

pod_metadata := object.get(obj.spec.template, "metadata", {}) if kind in template_kinds

pod_metadata := object.get(obj.spec.jobTemplate.spec.template, "metadata", {}) if kind == "CronJob"

# Every container of the pod spec, with the list it is in.
containers contains {"list": list, "container": c} if {
	some list in ["containers", "initContainers", "ephemeralContainers"]
	some c in pod_spec[list]
}
