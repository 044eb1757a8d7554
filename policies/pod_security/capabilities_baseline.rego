# PSS baseline, PSA check capabilities_baseline: no capability added beyond
# the container runtime's default set. Under restricted from v1.22,
# capabilities_restricted judges instead.
package tollgate.capabilities_baseline

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(m) if m.level == "baseline"

applies(m) if {
	m.level == "restricted"
	m.minor < 22
}

allowed := {
	"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
	"NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}

added(c) := {a | some a in pss.list(object.get(pss.context(c).capabilities, "add", [])); not a in allowed}

result(_) := {
	"reason": "non-default capabilities",
	"detail": sprintf("%s must not include %s in securityContext.capabilities.add", [pss.container_names(bad), pss.quoted(sort(caps))]),
} if {
	bad := [c.name | some c in pss.containers; count(added(c)) > 0]
	count(bad) > 0
	caps := {a | some c in pss.containers; some a in added(c)}
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
