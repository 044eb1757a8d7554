# PSS restricted (v1.23+), PSA check runAsUser: neither the pod nor a container
# sets runAsUser: 0 (any value in a pod with its own user namespace from v1.35).
package tollgate.run_as_user

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(m) if {
	m.level == "restricted"
	m.minor >= 23
	not pss.relaxed_for_user_namespace(m)
}

pod_root := count([1 | pss.pod_context.runAsUser == 0]) > 0

root := [c.name | some c in pss.containers; pss.context(c).runAsUser == 0]

result(_) := {"reason": "runAsUser=0", "detail": sprintf("%s must not set runAsUser=0", [pss.setters(pod_root, root)])} if {
	some bad in [pod_root, count(root) > 0]
	bad
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
