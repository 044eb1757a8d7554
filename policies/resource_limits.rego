# Containers must declare CPU and memory limits, so that one workload
# cannot starve the others on its node. Ephemeral (debug) containers cannot
# declare resources and are not checked.
package tollgate.resource_limits

import data.tollgate.lib.workloads
import rego.v1

match := {"kinds": workloads.kinds}

violation contains {"msg": msg} if {
	some entry in workloads.containers
	entry.list != "ephemeralContainers"
	some resource in ["cpu", "memory"]
	not entry.container.resources.limits[resource]
	msg := sprintf("container %q must declare resources.limits.%s", [entry.container.name, resource])
}
