# Helpers of the Pod Security Standards set (policies/pod_security/): the
# modes the request's namespace judges pods in, the pod as Pod Security
# Admission's checks see it, and a violation in PSA's words. Not a policy.
#
# `input.namespace.podSecurity` is what the webhook resolved from PSA's
# namespace labels over the team's default (webhook/src/pod_security.rs):
# {"enforce": {"level": "restricted", "version": "latest", "minor": 37},
#  "warn": {...}, "audit": {...}}.
package tollgate.lib.pod_security

import data.tollgate.lib.workloads
import rego.v1

match := {"kinds": workloads.kinds}

# Without a namespace (a bare evaluation): baseline enforced, the default.
default_levels := {"enforce": {"level": "baseline", "version": "latest", "minor": 37}}

levels := object.get(input, ["namespace", "podSecurity"], default_levels)

enforcement := {"enforce": "deny", "warn": "warn", "audit": "dryrun"}

# The modes a pod is judged in, strongest first; `privileged` judges nothing.
modes := [m |
	judged
	some mode in ["enforce", "warn", "audit"]
	lv := levels[mode]
	lv.level in {"baseline", "restricted"}
	m := object.union(lv, {"mode": mode})
]

# Subresources other than ephemeral containers (status, binding…) and Pod
# updates that change neither the spec nor the annotations, which are what
# controllers send about pods already running, are not judged.
judged if {
	object.get(input.review, "subResource", "") in {"", "ephemeralcontainers"}
	not unchanged_pod
}

unchanged_pod if {
	input.review.operation == "UPDATE"
	workloads.kind == "Pod"
	old := input.review.oldObject
	workloads.obj.spec == old.spec
	object.get(workloads.obj.metadata, "annotations", {}) == object.get(old.metadata, "annotations", {})
}

# One violation per check, in the strongest mode that fails: `failures` is
# the check's findings in `modes`' order, each the check's
# {"reason", "detail"} joined with its mode.
violation(failures) := {
	"msg": sprintf("violates PodSecurity \"%s:%s\": %s (%s)", [f.level, f.version, f.reason, f.detail]),
	"enforcement": enforcement[f.mode],
} if f := failures[0]

spec := workloads.pod_spec

annotations := object.get(workloads.pod_metadata, "annotations", {})

list(x) := x if is_array(x) else := []

# Every container in PSA's order: init containers, containers, ephemeral ones.
containers := array.concat(
	array.concat(list(object.get(spec, "initContainers", [])), list(object.get(spec, "containers", []))),
	list(object.get(spec, "ephemeralContainers", [])),
)

volumes := list(object.get(spec, "volumes", []))

pod_context := sc if {
	sc := spec.securityContext
	is_object(sc)
} else := {}

context(c) := sc if {
	sc := c.securityContext
	is_object(sc)
} else := {}

# Set to a non-null value.
set(x, key) if {
	object.get(x, key, null) != null
}

windows if spec.os.name == "windows"

# hostUsers: false: the pod has its own user namespace.
user_namespace if spec.hostUsers == false

plural(one, _, 1) := one

plural(_, many, n) := many if n != 1

quoted(items) := sprintf("\"%s\"", [concat("\", \"", items)])

# `container "a"`, `containers "a", "b"`.
named(one, many, names) := sprintf("%s %s", [plural(one, many, count(names)), quoted(names)])

container_names(names) := named("container", "containers", names)

# `pod and containers "a", "b"`: who set a forbidden value.
setters(pod, names) := concat(" and ", who(pod, names))

who(pod, names) := array.concat([s | pod; s := "pod"], [s | count(names) > 0; s := container_names(names)])

# Windows pods pass the Linux-only restricted checks from v1.25.
windows_exempt(m) if {
	m.minor >= 25
	windows
}

# From v1.35, a pod in its own user namespace may run as root inside it.
relaxed_for_user_namespace(m) if {
	m.minor >= 35
	user_namespace
}
