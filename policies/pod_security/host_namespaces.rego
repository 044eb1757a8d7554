# PSS baseline, PSA check hostNamespaces: no sharing of the node's network,
# PID or IPC namespace.
package tollgate.host_namespaces

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(_) := true

result(_) := {"reason": "host namespaces", "detail": concat(", ", shared)} if {
	shared := [sprintf("%s=true", [f]) | some f in ["hostNetwork", "hostPID", "hostIPC"]; pss.spec[f] == true]
	count(shared) > 0
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
