# PSS baseline (v1.34+), PSA check hostProbesAndHostLifecycle: probes and
# lifecycle handlers reach the container only, never another host.
package tollgate.host_probes_and_lifecycle

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(m) if m.minor >= 34

handlers(c) := array.concat(
	[object.get(c, p, null) | some p in ["livenessProbe", "readinessProbe", "startupProbe"]],
	[object.get(object.get(c, "lifecycle", {}), h, null) | some h in ["postStart", "preStop"]],
)

hosts(c) := {h |
	some handler in handlers(c)
	is_object(handler)
	some action in ["httpGet", "tcpSocket"]
	h := object.get(object.get(handler, action, {}), "host", "")
	is_string(h)
	h != ""
}

result(_) := {
	"reason": "probe or lifecycle host",
	"detail": sprintf("%s %s %s", [
		pss.container_names(sort(bad)), pss.plural("uses", "use", count(bad)),
		pss.named("probe or lifecycle host", "probe or lifecycle hosts", sort(forbidden)),
	]),
} if {
	bad := {c.name | some c in pss.containers; count(hosts(c)) > 0}
	count(bad) > 0
	forbidden := {h | some c in pss.containers; some h in hosts(c)}
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
