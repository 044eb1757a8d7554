package tollgate.run_as_non_root_test

import data.tollgate.lib.fixtures
import data.tollgate.run_as_non_root
import rego.v1

test_allows_the_pod_or_every_container if {
	count(run_as_non_root.violation) == 0 with input as fixtures.enforced(fixtures.restricted_spec, "restricted")
	per_container := fixtures.with_container({"securityContext": {"runAsNonRoot": true}})
	count(run_as_non_root.violation) == 0 with input as fixtures.enforced(per_container, "restricted")
}

test_denies_false_before_unset if {
	explicit := object.union(fixtures.restricted_container({"securityContext": {"runAsNonRoot": false}}), {"securityContext": {"runAsNonRoot": false}})
	run_as_non_root.violation == {{"msg": "violates PodSecurity \"restricted:v1.37\": runAsNonRoot != true (pod and container \"app\" must not set securityContext.runAsNonRoot=false)", "enforcement": "deny"}} with input as fixtures.enforced(explicit, "restricted")
	run_as_non_root.violation == {{"msg": "violates PodSecurity \"restricted:v1.37\": runAsNonRoot != true (pod or container \"app\" must set securityContext.runAsNonRoot=true)", "enforcement": "deny"}} with input as fixtures.enforced(fixtures.spec, "restricted")
}

test_a_user_namespace_pod_may_leave_it_from_v1_35 if {
	userns := object.union(fixtures.spec, {"hostUsers": false})
	count(run_as_non_root.violation) == 0 with input as fixtures.enforced(userns, "restricted")
	count(run_as_non_root.violation) == 1 with input as fixtures.pss(userns, {"enforce": "restricted"}, 34)
}
