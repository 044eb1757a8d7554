package tollgate.resource_limits_test

import data.tollgate.lib.fixtures
import data.tollgate.lib.workloads
import data.tollgate.resource_limits
import rego.v1

test_allows_containers_with_limits if {
	count(resource_limits.violation) == 0 with input as fixtures.pod(fixtures.spec)
}

test_denies_missing_limits_in_every_workload_kind if {
	spec := {"containers": [{"name": "app", "image": "x:1", "resources": {"requests": {"cpu": "1"}}}]}
	every kind in workloads.kinds {
		resource_limits.violation == {
			{"msg": "container \"app\" must declare resources.limits.cpu"},
			{"msg": "container \"app\" must declare resources.limits.memory"},
		} with input as fixtures.review(kind, spec)
	}
}

test_denies_a_missing_memory_limit_on_an_init_container if {
	spec := {"containers": [fixtures.container], "initContainers": [{"name": "setup", "image": "x:1", "resources": {"limits": {"cpu": "1"}}}]}
	resource_limits.violation == {{"msg": "container \"setup\" must declare resources.limits.memory"}} with input as fixtures.pod(spec)
}

test_ephemeral_containers_are_not_checked if {
	spec := {"containers": [fixtures.container], "ephemeralContainers": [{"name": "debug", "image": "busybox:1.36"}]}
	count(resource_limits.violation) == 0 with input as fixtures.pod(spec)
}
