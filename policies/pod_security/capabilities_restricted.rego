# PSS restricted (v1.22+), PSA check capabilities_restricted: every container
# drops ALL and adds nothing but NET_BIND_SERVICE (Windows pods pass from v1.25).
package tollgate.capabilities_restricted

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(m) if {
	m.level == "restricted"
	m.minor >= 22
	not pss.windows_exempt(m)
}

caps(c) := cs if {
	cs := pss.context(c).capabilities
	is_object(cs)
}

missing_drop := [c.name | some c in pss.containers; not drops_all(c)]

drops_all(c) if "ALL" in pss.list(object.get(caps(c), "drop", []))

added(c) := {a | some a in pss.list(object.get(caps(c), "add", [])); a != "NET_BIND_SERVICE"}

adding := [c.name | some c in pss.containers; count(added(c)) > 0]

details := array.concat(
	[sprintf("%s must set securityContext.capabilities.drop=[\"ALL\"]", [pss.container_names(missing_drop)]) | count(missing_drop) > 0],
	[sprintf("%s must not include %s in securityContext.capabilities.add", [pss.container_names(adding), pss.quoted(sort({a | some c in pss.containers; some a in added(c)}))]) | count(adding) > 0],
)

result(_) := {"reason": "unrestricted capabilities", "detail": concat("; ", details)} if count(details) > 0

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
