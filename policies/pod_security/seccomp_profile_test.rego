package tollgate.seccomp_profile_test

import data.tollgate.lib.fixtures
import data.tollgate.seccomp_profile
import rego.v1

test_allows_runtime_default_on_the_pod if {
	count(seccomp_profile.violation) == 0 with input as fixtures.enforced(fixtures.restricted_spec, "restricted")
}

test_baseline_forbids_unconfined_restricted_also_requires_one if {
	spec := fixtures.with_container({"securityContext": {"seccompProfile": {"type": "Unconfined"}}})
	seccomp_profile.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": seccompProfile (container \"app\" must not set securityContext.seccompProfile.type to \"Unconfined\")", "enforcement": "deny"}} with input as fixtures.enforced(spec, "baseline")
	count(seccomp_profile.violation) == 0 with input as fixtures.enforced(fixtures.spec, "baseline")
	seccomp_profile.violation == {{"msg": "violates PodSecurity \"restricted:v1.37\": seccompProfile (pod or container \"app\" must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\")", "enforcement": "deny"}} with input as fixtures.enforced(fixtures.spec, "restricted")
	windows := object.union(fixtures.spec, {"os": {"name": "windows"}})
	count(seccomp_profile.violation) == 0 with input as fixtures.enforced(windows, "restricted")
}

test_before_v1_19_the_annotations_are_judged if {
	base := fixtures.pss(fixtures.spec, {"enforce": "restricted"}, 18)
	count(seccomp_profile.violation) == 0 with input as base
	annotated := object.union(base, {"review": {"object": {"metadata": {"annotations": {"seccomp.security.alpha.kubernetes.io/pod": "unconfined"}}}}})
	seccomp_profile.violation == {{"msg": "violates PodSecurity \"restricted:v1.18\": seccompProfile (forbidden annotation seccomp.security.alpha.kubernetes.io/pod=\"unconfined\")", "enforcement": "deny"}} with input as annotated
}
