# PSS baseline, PSA checks procMount and procMount_restricted: the default
# /proc masks stay (procMount unset or Default). From v1.35, baseline lets
# a pod in its own user namespace (hostUsers: false) choose; restricted
# does not.
package tollgate.proc_mount

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(m) if not relaxed(m)

relaxed(m) if {
	m.level == "baseline"
	m.minor >= 35
	pss.user_namespace
}

mount(c) := m if {
	m := pss.context(c).procMount
	is_string(m)
	m != "Default"
}

result(_) := {
	"reason": "procMount",
	"detail": sprintf("%s must not set securityContext.procMount to %s", [pss.container_names(bad), pss.quoted(sort(types))]),
} if {
	bad := [c.name | some c in pss.containers; mount(c)]
	count(bad) > 0
	types := {mount(c) | some c in pss.containers}
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
