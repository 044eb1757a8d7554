package tollgate.team_label_test

import data.tollgate.lib.fixtures
import data.tollgate.lib.workloads
import data.tollgate.team_label
import rego.v1

unlabelled(kind) := json.patch(fixtures.review(kind, fixtures.spec), [{"op": "remove", "path": "/review/object/metadata/labels/team"}])

test_allows_a_labelled_workload if {
	every kind in workloads.kinds {
		count(team_label.violation) == 0 with input as fixtures.review(kind, fixtures.spec)
	}
}

test_denies_an_unlabelled_workload_of_every_kind if {
	every kind in workloads.kinds {
		team_label.violation == {{"msg": sprintf("%s \"trainer\" must carry the label \"team\" naming the team that owns it", [kind])}} with input as unlabelled(kind)
	}
}

test_denies_an_empty_team_label if {
	review_input := json.patch(fixtures.pod(fixtures.spec), [{"op": "replace", "path": "/review/object/metadata/labels/team", "value": ""}])
	count(team_label.violation) == 1 with input as review_input
}

test_the_label_key_is_a_parameter if {
	review_input := object.union(fixtures.pod(fixtures.spec), {"parameters": {"key": "example.com/team"}})
	team_label.violation == {{"msg": "Pod \"trainer\" must carry the label \"example.com/team\" naming the team that owns it"}} with input as review_input
}

test_generate_name_is_used_when_there_is_no_name if {
	review_input := json.patch(unlabelled("Pod"), [
		{"op": "remove", "path": "/review/object/metadata/name"},
		{"op": "add", "path": "/review/object/metadata/generateName", "value": "trainer-"},
	])
	team_label.violation == {{"msg": "Pod \"trainer-*\" must carry the label \"team\" naming the team that owns it"}} with input as review_input
}

test_other_kinds_are_not_checked if {
	review_input := {"review": {"kind": {"kind": "ConfigMap"}, "object": {"metadata": {"name": "c"}}}, "parameters": {}}
	count(team_label.violation) == 0 with input as review_input
}
