package tollgate.proc_mount_test

import data.tollgate.lib.fixtures
import data.tollgate.proc_mount
import rego.v1

test_allows_the_default_proc_mount if {
	spec := fixtures.with_container({"securityContext": {"procMount": "Default"}})
	count(proc_mount.violation) == 0 with input as fixtures.enforced(spec, "restricted")
}

test_denies_unmasked_unless_baseline_lets_a_user_namespace_choose if {
	spec := fixtures.with_container({"securityContext": {"procMount": "Unmasked"}})
	proc_mount.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": procMount (container \"app\" must not set securityContext.procMount to \"Unmasked\")", "enforcement": "deny"}} with input as fixtures.enforced(spec, "baseline")
	userns := object.union(spec, {"hostUsers": false})
	count(proc_mount.violation) == 0 with input as fixtures.enforced(userns, "baseline")
	count(proc_mount.violation) == 1 with input as fixtures.pss(userns, {"enforce": "baseline"}, 34)
	count(proc_mount.violation) == 1 with input as fixtures.enforced(userns, "restricted")
}
