package tollgate.capabilities_restricted_test

import data.tollgate.lib.fixtures
import data.tollgate.capabilities_restricted
import rego.v1

test_allows_drop_all_and_net_bind_service if {
	spec := fixtures.restricted_container({"securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}})
	count(capabilities_restricted.violation) == 0 with input as fixtures.enforced(spec, "restricted")
}

test_denies_a_missing_drop_and_added_capabilities if {
	spec := fixtures.restricted_container({"securityContext": {"capabilities": {"drop": ["NET_RAW"], "add": ["CHOWN"]}}})
	capabilities_restricted.violation == {{"msg": "violates PodSecurity \"restricted:v1.37\": unrestricted capabilities (container \"app\" must set securityContext.capabilities.drop=[\"ALL\"]; container \"app\" must not include \"CHOWN\" in securityContext.capabilities.add)", "enforcement": "deny"}} with input as fixtures.enforced(spec, "restricted")
	count(capabilities_restricted.violation) == 1 with input as fixtures.enforced(fixtures.spec, "restricted")
}

test_baseline_old_versions_and_windows_pass if {
	count(capabilities_restricted.violation) == 0 with input as fixtures.enforced(fixtures.spec, "baseline")
	count(capabilities_restricted.violation) == 0 with input as fixtures.pss(fixtures.spec, {"enforce": "restricted"}, 21)
	count(capabilities_restricted.violation) == 0 with input as fixtures.enforced(object.union(fixtures.spec, {"os": {"name": "windows"}}), "restricted")
}
