package tollgate.host_path_volumes_test

import data.tollgate.lib.fixtures
import data.tollgate.host_path_volumes
import rego.v1

test_allows_other_volumes if {
	spec := object.union(fixtures.spec, {"volumes": [{"name": "tmp", "emptyDir": {}}]})
	count(host_path_volumes.violation) == 0 with input as fixtures.enforced(spec, "baseline")
}

test_denies_host_path_under_baseline_only if {
	spec := object.union(fixtures.spec, {"volumes": [{"name": "a", "hostPath": {"path": "/"}}, {"name": "b", "hostPath": {"path": "/etc"}}]})
	host_path_volumes.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": hostPath volumes (volumes \"a\", \"b\")", "enforcement": "deny"}} with input as fixtures.enforced(spec, "baseline")
	# volume_types judges them under restricted.
	count(host_path_volumes.violation) == 0 with input as fixtures.enforced(spec, "restricted")
}
