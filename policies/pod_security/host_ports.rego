# PSS baseline, PSA check hostPorts: no container port bound on the node
# (hostPort).
package tollgate.host_ports

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(_) := true

host_ports(c) := {format_int(p.hostPort, 10) | some p in pss.list(object.get(c, "ports", [])); object.get(p, "hostPort", 0) != 0}

result(_) := {
	"reason": "hostPort",
	"detail": sprintf("%s %s %s", [
		pss.container_names(bad), pss.plural("uses", "use", count(bad)),
		sprintf("%s %s", [pss.plural("hostPort", "hostPorts", count(ports)), concat(", ", sort(ports))]),
	]),
} if {
	bad := [c.name | some c in pss.containers; count(host_ports(c)) > 0]
	count(bad) > 0
	ports := {p | some c in pss.containers; some p in host_ports(c)}
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
