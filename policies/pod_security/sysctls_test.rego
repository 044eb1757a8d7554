package tollgate.sysctls_test

import data.tollgate.lib.fixtures
import data.tollgate.sysctls
import rego.v1

test_allows_safe_sysctls_of_the_version if {
	spec := object.union(fixtures.spec, {"securityContext": {"sysctls": [{"name": "net.ipv4.tcp_notsent_lowat", "value": "1"}]}})
	count(sysctls.violation) == 0 with input as fixtures.enforced(spec, "baseline")
}

test_denies_others if {
	spec := object.union(fixtures.spec, {"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_rmem", "value": "1"}]}})
	sysctls.violation == {{"msg": "violates PodSecurity \"baseline:v1.31\": forbidden sysctls (kernel.msgmax, net.ipv4.tcp_rmem)", "enforcement": "deny"}} with input as fixtures.pss(spec, {"enforce": "baseline"}, 31)
	sysctls.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": forbidden sysctls (kernel.msgmax)", "enforcement": "deny"}} with input as fixtures.enforced(spec, "baseline")
}
