# PSS baseline, PSA check privileged: no container runs privileged (root on
# the node).
package tollgate.privileged

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(_) := true

result(_) := {"reason": "privileged", "detail": sprintf("%s must not set securityContext.privileged=true", [pss.container_names(bad)])} if {
	bad := [c.name | some c in pss.containers; pss.context(c).privileged == true]
	count(bad) > 0
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
