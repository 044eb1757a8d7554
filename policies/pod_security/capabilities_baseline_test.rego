package tollgate.capabilities_baseline_test

import data.tollgate.lib.fixtures
import data.tollgate.capabilities_baseline
import rego.v1

test_allows_the_default_set if {
	spec := fixtures.with_container({"securityContext": {"capabilities": {"add": ["CHOWN", "NET_BIND_SERVICE"]}}})
	count(capabilities_baseline.violation) == 0 with input as fixtures.enforced(spec, "baseline")
}

test_denies_others_under_baseline_and_old_restricted if {
	spec := fixtures.with_container({"securityContext": {"capabilities": {"add": ["SYS_ADMIN", "NET_RAW", "CHOWN"]}}})
	capabilities_baseline.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": non-default capabilities (container \"app\" must not include \"NET_RAW\", \"SYS_ADMIN\" in securityContext.capabilities.add)", "enforcement": "deny"}} with input as fixtures.enforced(spec, "baseline")
	count(capabilities_baseline.violation) == 1 with input as fixtures.pss(spec, {"enforce": "restricted"}, 21)
	# capabilities_restricted judges restricted from v1.22.
	count(capabilities_baseline.violation) == 0 with input as fixtures.enforced(spec, "restricted")
}
