# No access to the node: hostNetwork, hostPID, hostIPC and hostPath volumes
# each let a pod see or change what belongs to other tenants.
package tollgate.host_access

import data.tollgate.lib.workloads
import rego.v1

match := {"kinds": workloads.kinds}

violation contains {"msg": msg} if {
	some field in ["hostNetwork", "hostPID", "hostIPC"]
	workloads.pod_spec[field] == true
	msg := sprintf("%s %q must not set %s: true", [workloads.kind, workloads.name, field])
}

violation contains {"msg": msg} if {
	some volume in workloads.pod_spec.volumes
	volume.hostPath
	msg := sprintf("volume %q must not mount the node's path %q (hostPath)", [volume.name, volume.hostPath.path])
}
