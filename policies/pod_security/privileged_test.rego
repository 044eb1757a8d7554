package tollgate.privileged_test

import data.tollgate.lib.fixtures
import data.tollgate.privileged
import rego.v1

test_allows_a_restricted_pod_at_every_level if {
	every level in ["baseline", "restricted"] {
		count(privileged.violation) == 0 with input as fixtures.enforced(fixtures.restricted_spec, level)
	}
}

test_denies_a_privileged_container_in_every_workload_kind if {
	spec := fixtures.with_container({"securityContext": {"privileged": true}})
	every kind in ["Pod", "Deployment", "CronJob", "Job", "StatefulSet"] {
		privileged.violation == {{"msg": "violates PodSecurity \"baseline:v1.37\": privileged (container \"app\" must not set securityContext.privileged=true)", "enforcement": "deny"}} with input as object.union(fixtures.review(kind, spec), {"namespace": fixtures.enforced(spec, "baseline").namespace})
	}
}

test_without_a_namespace_baseline_is_enforced if {
	spec := fixtures.with_container({"securityContext": {"privileged": true}})
	count(privileged.violation) == 1 with input as fixtures.pod(spec)
}

test_a_privileged_namespace_judges_nothing if {
	spec := fixtures.with_container({"securityContext": {"privileged": true}})
	count(privileged.violation) == 0 with input as fixtures.enforced(spec, "privileged")
}

test_only_the_strongest_failing_mode_is_reported if {
	spec := fixtures.with_container({"securityContext": {"privileged": true}})
	levels := {"enforce": "privileged", "warn": "baseline", "audit": "restricted"}
	[v.enforcement | some v in privileged.violation] == ["warn"] with input as fixtures.pss(spec, levels, 30)
	audit := {"enforce": "privileged", "audit": "baseline"}
	[v.enforcement | some v in privileged.violation] == ["dryrun"] with input as fixtures.pss(spec, audit, 30)
}

test_an_unchanged_pod_update_and_status_writes_are_not_judged if {
	spec := fixtures.with_container({"securityContext": {"privileged": true}})
	base := fixtures.enforced(spec, "baseline")
	update := object.union(base, {"review": {"operation": "UPDATE", "oldObject": base.review.object}})
	count(privileged.violation) == 0 with input as update
	status := object.union(base, {"review": {"subResource": "status"}})
	count(privileged.violation) == 0 with input as status
	changed := object.union(update, {"review": {"oldObject": {"spec": fixtures.spec}}})
	count(privileged.violation) == 1 with input as changed
}
