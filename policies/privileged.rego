# No privileged containers: a privileged container is root on the node.
package tollgate.privileged

import data.tollgate.lib.workloads
import rego.v1

match := {"kinds": workloads.kinds}

violation contains {"msg": msg} if {
	some entry in workloads.containers
	entry.container.securityContext.privileged == true
	msg := sprintf("container %q must not run privileged (securityContext.privileged: true)", [entry.container.name])
}
