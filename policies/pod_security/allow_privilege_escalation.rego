# PSS restricted (v1.8+), PSA check allowPrivilegeEscalation: every
# container sets allowPrivilegeEscalation: false (Windows pods pass from v1.25).
package tollgate.allow_privilege_escalation

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(m) if {
	m.level == "restricted"
	m.minor >= 8
	not pss.windows_exempt(m)
}

result(_) := {
	"reason": "allowPrivilegeEscalation != false",
	"detail": sprintf("%s must set securityContext.allowPrivilegeEscalation=false", [pss.container_names(bad)]),
} if {
	bad := [c.name | some c in pss.containers; not pss.context(c).allowPrivilegeEscalation == false]
	count(bad) > 0
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
