package tollgate.allow_privilege_escalation_test

import data.tollgate.lib.fixtures
import data.tollgate.allow_privilege_escalation
import rego.v1

test_allows_false if {
	count(allow_privilege_escalation.violation) == 0 with input as fixtures.enforced(fixtures.restricted_spec, "restricted")
}

test_denies_unset_and_true if {
	unset := object.union(fixtures.restricted_spec, {"containers": [fixtures.container]})
	allow_privilege_escalation.violation == {{"msg": "violates PodSecurity \"restricted:v1.37\": allowPrivilegeEscalation != false (container \"app\" must set securityContext.allowPrivilegeEscalation=false)", "enforcement": "deny"}} with input as fixtures.enforced(unset, "restricted")
	on := fixtures.restricted_container({"securityContext": {"allowPrivilegeEscalation": true}})
	count(allow_privilege_escalation.violation) == 1 with input as fixtures.enforced(on, "restricted")
}

test_baseline_older_versions_and_windows_do_not_require_it if {
	count(allow_privilege_escalation.violation) == 0 with input as fixtures.enforced(fixtures.spec, "baseline")
	count(allow_privilege_escalation.violation) == 0 with input as fixtures.pss(fixtures.spec, {"enforce": "restricted"}, 7)
	windows := object.union(fixtures.spec, {"os": {"name": "windows"}})
	count(allow_privilege_escalation.violation) == 0 with input as fixtures.enforced(windows, "restricted")
	count(allow_privilege_escalation.violation) == 1 with input as fixtures.pss(windows, {"enforce": "restricted"}, 24)
}
