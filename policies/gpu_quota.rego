# GPUs only for teams with GPU quota: a pod that asks for GPUs in a team
# whose quota has none would sit Pending forever; say so at apply time.
# The teams' quotas come from the webhook's config as data.tollgate.config.teams
# (labelKey, gpuResource, gpuQuota per team, defaultGpuQuota).
package tollgate.gpu_quota

import data.tollgate.lib.workloads
import rego.v1

match := {"kinds": workloads.kinds}

# A reference to the path, not object.get over all of `data`: OPA's
# compiler refuses the latter as recursion (data holds this very rule).
default teams := {}

teams := data.tollgate.config.teams

label_key := object.get(teams, "labelKey", "team")

gpu_resource := object.get(teams, "gpuResource", "nvidia.com/gpu")

team := workloads.obj.metadata.labels[label_key]

quota := object.get(teams, ["gpuQuota", team], object.get(teams, "defaultGpuQuota", "0"))

violation contains {"msg": msg} if {
	some entry in workloads.containers
	some section in ["limits", "requests"]
	asked := entry.container.resources[section][gpu_resource]
	to_number(asked) > 0
	to_number(quota) == 0
	msg := sprintf("container %q requests %v %s, but team %q has a GPU quota of %v; ask the platform team for GPU quota", [entry.container.name, asked, gpu_resource, team, quota])
}
