package tollgate.windows_host_process_test

import data.tollgate.lib.fixtures
import data.tollgate.windows_host_process
import rego.v1

test_allows_false if {
	spec := fixtures.with_container({"securityContext": {"windowsOptions": {"hostProcess": false}}})
	count(windows_host_process.violation) == 0 with input as fixtures.enforced(spec, "baseline")
}

test_denies_host_process_pods_and_containers if {
	spec := object.union(fixtures.with_container({"securityContext": {"windowsOptions": {"hostProcess": true}}}), {"securityContext": {"windowsOptions": {"hostProcess": true}}})
	windows_host_process.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": hostProcess (pod and container \"app\" must not set securityContext.windowsOptions.hostProcess=true)", "enforcement": "deny"}} with input as fixtures.enforced(spec, "baseline")
}
