package tollgate.app_armor_profile_test

import data.tollgate.lib.fixtures
import data.tollgate.app_armor_profile
import rego.v1

test_allows_runtime_default_and_localhost if {
	spec := fixtures.restricted_with({"securityContext": {"appArmorProfile": {"type": "Localhost", "localhostProfile": "p"}}})
	count(app_armor_profile.violation) == 0 with input as fixtures.enforced(spec, "baseline")
}

test_denies_unconfined_fields_and_annotations if {
	spec := fixtures.restricted_container({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}})
	pod_spec := object.union(spec, {"securityContext": {"appArmorProfile": {"type": "Unconfined"}}})
	app_armor_profile.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": forbidden AppArmor profile (pod and container \"app\" must not set AppArmor profile type to \"Unconfined\")", "enforcement": "deny"}} with input as fixtures.enforced(pod_spec, "baseline")
	annotated := object.union(fixtures.enforced(fixtures.restricted_spec, "baseline"), {"review": {"object": {"metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/app": "unconfined"}}}}})
	app_armor_profile.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": forbidden AppArmor profile (annotation must not set AppArmor profile type to \"container.apparmor.security.beta.kubernetes.io/app=\"unconfined\"\")", "enforcement": "deny"}} with input as annotated
	fine := object.union(fixtures.enforced(fixtures.restricted_spec, "baseline"), {"review": {"object": {"metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/app": "localhost/p"}}}}})
	count(app_armor_profile.violation) == 0 with input as fine
}
