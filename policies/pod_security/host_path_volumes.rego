# PSS baseline, PSA check hostPathVolumes: no hostPath volumes. Under
# restricted, volume_types judges them with every other type.
package tollgate.host_path_volumes

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(m) if m.level == "baseline"

result(_) := {"reason": "hostPath volumes", "detail": pss.named("volume", "volumes", bad)} if {
	bad := [v.name | some v in pss.volumes; pss.set(v, "hostPath")]
	count(bad) > 0
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
