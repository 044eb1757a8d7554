package tollgate.host_ports_test

import data.tollgate.lib.fixtures
import data.tollgate.host_ports
import rego.v1

test_allows_container_ports if {
	spec := fixtures.with_container({"ports": [{"containerPort": 80}, {"containerPort": 81, "hostPort": 0}]})
	count(host_ports.violation) == 0 with input as fixtures.enforced(spec, "baseline")
}

test_denies_host_ports if {
	spec := fixtures.with_container({"ports": [{"containerPort": 80, "hostPort": 8080}, {"containerPort": 81, "hostPort": 10}]})
	host_ports.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": hostPort (container \"app\" uses hostPorts 10, 8080)", "enforcement": "deny"}} with input as fixtures.enforced(spec, "baseline")
}
