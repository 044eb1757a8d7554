# PSS restricted, PSA check runAsNonRoot: the pod, or every container, sets
# runAsNonRoot: true, and none sets false (any value in a pod with its own
# user namespace from v1.35).
package tollgate.run_as_non_root

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(m) if {
	m.level == "restricted"
	not pss.relaxed_for_user_namespace(m)
}

pod_value := v if {
	v := pss.pod_context.runAsNonRoot
	is_boolean(v)
}

pod_false := count([1 | pod_value == false]) > 0

explicit := [c.name | some c in pss.containers; pss.context(c).runAsNonRoot == false]

implicit := [c.name | some c in pss.containers; not pss.set(pss.context(c), "runAsNonRoot"); not pod_value == true]

result(_) := {
	"reason": "runAsNonRoot != true",
	"detail": sprintf("%s must not set securityContext.runAsNonRoot=false", [pss.setters(pod_false, explicit)]),
} if {
	some explicitly_bad in [pod_false, count(explicit) > 0]
	explicitly_bad
} else := {
	"reason": "runAsNonRoot != true",
	"detail": sprintf("pod or %s must set securityContext.runAsNonRoot=true", [pss.container_names(implicit)]),
} if count(implicit) > 0

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
