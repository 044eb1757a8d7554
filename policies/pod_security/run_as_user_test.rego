package tollgate.run_as_user_test

import data.tollgate.lib.fixtures
import data.tollgate.run_as_user
import rego.v1

test_allows_non_zero_uids if {
	spec := fixtures.restricted_with({"securityContext": {"runAsUser": 1000}})
	count(run_as_user.violation) == 0 with input as fixtures.enforced(spec, "restricted")
}

test_denies_uid_0_from_v1_23 if {
	spec := object.union(fixtures.restricted_container({"securityContext": {"runAsUser": 0}}), {"securityContext": {"runAsUser": 0}})
	run_as_user.violation == {{"msg": "violates PodSecurity \"restricted:v1.37\": runAsUser=0 (pod and container \"app\" must not set runAsUser=0)", "enforcement": "deny"}} with input as fixtures.enforced(spec, "restricted")
	count(run_as_user.violation) == 0 with input as fixtures.pss(spec, {"enforce": "restricted"}, 22)
	count(run_as_user.violation) == 0 with input as fixtures.enforced(object.union(spec, {"hostUsers": false}), "restricted")
}
