package tollgate.host_probes_and_lifecycle_test

import data.tollgate.lib.fixtures
import data.tollgate.host_probes_and_lifecycle
import rego.v1

test_allows_probes_without_a_host if {
	spec := fixtures.with_container({"livenessProbe": {"httpGet": {"port": 80}}, "lifecycle": {"preStop": {"tcpSocket": {"port": 80, "host": ""}}}})
	count(host_probes_and_lifecycle.violation) == 0 with input as fixtures.enforced(spec, "baseline")
}

test_denies_another_host_from_v1_34 if {
	spec := fixtures.with_container({"readinessProbe": {"tcpSocket": {"port": 80, "host": "10.0.0.1"}}, "lifecycle": {"postStart": {"httpGet": {"port": 80, "host": "example.com"}}}})
	host_probes_and_lifecycle.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": probe or lifecycle host (container \"app\" uses probe or lifecycle hosts \"10.0.0.1\", \"example.com\")", "enforcement": "deny"}} with input as fixtures.enforced(spec, "baseline")
	count(host_probes_and_lifecycle.violation) == 0 with input as fixtures.pss(spec, {"enforce": "baseline"}, 33)
}
