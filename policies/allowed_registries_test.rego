package tollgate.allowed_registries_test

import data.tollgate.allowed_registries
import data.tollgate.lib.fixtures
import data.tollgate.lib.workloads
import rego.v1

review(image) := object.union(
	fixtures.pod(fixtures.with_container({"image": image})),
	{"parameters": {"registries": ["registry.example.com/", "docker.io/library/"]}},
)

test_allows_an_image_from_an_allowed_registry if {
	count(allowed_registries.violation) == 0 with input as review("registry.example.com/ml/trainer:1.4.2")
}

test_expands_docker_hub_short_names if {
	count(allowed_registries.violation) == 0 with input as review("nginx:1.25")
	count(allowed_registries.violation) == 1 with input as review("someone/nginx:1.25")
}

test_denies_other_registries_in_every_workload_kind if {
	every kind in workloads.kinds {
		review_input := object.union(
			fixtures.review(kind, fixtures.with_container({"image": "evil.example.org/x:1.0"})),
			{"parameters": {"registries": ["registry.example.com/"]}},
		)
		allowed_registries.violation == {{"msg": "container \"app\" image \"evil.example.org/x:1.0\" is not from an allowed registry (allowed: registry.example.com/)"}} with input as review_input
	}
}

test_a_prefix_is_not_fooled_by_a_lookalike_host if {
	count(allowed_registries.violation) == 1 with input as review("registry.example.com.evil.org/x:1")
}

test_registry_with_port_is_a_registry if {
	count(allowed_registries.violation) == 1 with input as review("localhost:5000/x:1")
}

test_defaults_apply_without_parameters if {
	count(allowed_registries.violation) == 0 with input as fixtures.pod(fixtures.with_container({"image": "registry.k8s.io/pause:3.9"}))
	count(allowed_registries.violation) == 1 with input as fixtures.pod(fixtures.with_container({"image": "evil.example.org/x:1.0"}))
}
