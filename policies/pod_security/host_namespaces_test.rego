package tollgate.host_namespaces_test

import data.tollgate.lib.fixtures
import data.tollgate.host_namespaces
import rego.v1

test_allows_false_and_unset if {
	spec := object.union(fixtures.spec, {"hostNetwork": false})
	count(host_namespaces.violation) == 0 with input as fixtures.enforced(spec, "baseline")
}

test_denies_each_host_namespace if {
	spec := object.union(fixtures.spec, {"hostNetwork": true, "hostIPC": true, "hostPID": true})
	host_namespaces.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": host namespaces (hostNetwork=true, hostPID=true, hostIPC=true)", "enforcement": "deny"}} with input as fixtures.enforced(spec, "baseline")
}
