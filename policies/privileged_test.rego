package tollgate.privileged_test

import data.tollgate.lib.fixtures
import data.tollgate.lib.workloads
import data.tollgate.privileged
import rego.v1

test_allows_an_unprivileged_pod if {
	count(privileged.violation) == 0 with input as fixtures.pod(fixtures.spec)
}

test_denies_a_privileged_container_in_every_workload_kind if {
	spec := fixtures.with_container({"securityContext": {"privileged": true}})
	every kind in workloads.kinds {
		privileged.violation == {{"msg": "container \"app\" must not run privileged (securityContext.privileged: true)"}} with input as fixtures.review(kind, spec)
	}
}

test_denies_a_privileged_init_container if {
	spec := {"containers": [fixtures.container], "initContainers": [{"name": "setup", "image": "x:1", "securityContext": {"privileged": true}}]}
	privileged.violation == {{"msg": "container \"setup\" must not run privileged (securityContext.privileged: true)"}} with input as fixtures.pod(spec)
}

test_privileged_false_is_allowed if {
	spec := fixtures.with_container({"securityContext": {"privileged": false}})
	count(privileged.violation) == 0 with input as fixtures.pod(spec)
}
