# PSS baseline, PSA check windowsHostProcess: no Windows HostProcess pods or
# containers.
package tollgate.windows_host_process

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(_) := true

host_process(sc) if sc.windowsOptions.hostProcess == true

pod := count([1 | host_process(pss.pod_context)]) > 0

bad := [c.name | some c in pss.containers; host_process(pss.context(c))]

result(_) := {"reason": "hostProcess", "detail": sprintf("%s must not set securityContext.windowsOptions.hostProcess=true", [pss.setters(pod, bad)])} if {
	some any in [pod, count(bad) > 0]
	any
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
