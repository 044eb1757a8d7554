package tollgate.se_linux_options_test

import data.tollgate.lib.fixtures
import data.tollgate.se_linux_options
import rego.v1

test_allows_container_types if {
	spec := fixtures.with_container({"securityContext": {"seLinuxOptions": {"type": "container_engine_t", "level": "s0"}}})
	count(se_linux_options.violation) == 0 with input as fixtures.enforced(spec, "baseline")
}

test_denies_other_types_users_and_roles if {
	spec := object.union(fixtures.with_container({"securityContext": {"seLinuxOptions": {"type": "spc_t", "role": "r"}}}), {"securityContext": {"seLinuxOptions": {"user": "u"}}})
	se_linux_options.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": seLinuxOptions (pod and container \"app\" set forbidden securityContext.seLinuxOptions: type \"spc_t\"; user may not be set; role may not be set)", "enforcement": "deny"}} with input as fixtures.enforced(spec, "baseline")
	engine := fixtures.with_container({"securityContext": {"seLinuxOptions": {"type": "container_engine_t"}}})
	count(se_linux_options.violation) == 1 with input as fixtures.pss(engine, {"enforce": "baseline"}, 30)
}
