package tollgate.volume_types_test

import data.tollgate.lib.fixtures
import data.tollgate.volume_types
import rego.v1

test_allows_the_restricted_types_and_a_bare_volume if {
	spec := object.union(fixtures.spec, {"volumes": [{"name": "a", "configMap": {"name": "c"}}, {"name": "implicit"}]})
	count(volume_types.violation) == 0 with input as fixtures.enforced(spec, "restricted")
}

test_denies_the_rest_under_restricted if {
	spec := object.union(fixtures.spec, {"volumes": [{"name": "a", "hostPath": {"path": "/"}}, {"name": "b", "nfs": {"server": "s", "path": "/"}}, {"name": "c", "future": {}}]})
	volume_types.violation == {{"msg": "violates PodSecurity \"restricted:v1.37\": restricted volume types (volumes \"a\", \"b\", \"c\" use restricted volume types \"hostPath\", \"nfs\", \"unknown\")", "enforcement": "deny"}} with input as fixtures.enforced(spec, "restricted")
	count(volume_types.violation) == 0 with input as fixtures.enforced(spec, "baseline")
}
