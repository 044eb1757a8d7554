package tollgate.gpu_quota_test

import data.tollgate.gpu_quota
import data.tollgate.lib.fixtures
import data.tollgate.lib.workloads
import rego.v1

teams := {"labelKey": "team", "gpuResource": "nvidia.com/gpu", "gpuQuota": {"ml": "2"}, "defaultGpuQuota": "0"}

gpu_spec := fixtures.with_container({"resources": {"limits": {"cpu": "1", "memory": "1Gi", "nvidia.com/gpu": "1"}}})

test_a_team_with_gpu_quota_may_ask_for_gpus if {
	count(gpu_quota.violation) == 0 with input as fixtures.pod(gpu_spec) with data.tollgate.config.teams as teams
}

test_a_team_without_gpu_quota_is_denied_in_every_workload_kind if {
	without := {"labelKey": "team", "gpuQuota": {"data": "4"}, "defaultGpuQuota": "0"}
	every kind in workloads.kinds {
		gpu_quota.violation == {{"msg": "container \"app\" requests 1 nvidia.com/gpu, but team \"ml\" has a GPU quota of 0; ask the platform team for GPU quota"}} with input as fixtures.review(kind, gpu_spec) with data.tollgate.config.teams as without
	}
}

test_cpu_pods_are_never_checked if {
	count(gpu_quota.violation) == 0 with input as fixtures.pod(fixtures.spec) with data.tollgate.config.teams as {"defaultGpuQuota": "0"}
}

test_without_config_no_team_gets_gpus if {
	count(gpu_quota.violation) == 1 with input as fixtures.pod(gpu_spec)
}
