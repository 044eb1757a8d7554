package tollgate.image_tag_test

import data.tollgate.image_tag
import data.tollgate.lib.fixtures
import data.tollgate.lib.workloads
import rego.v1

review(image) := fixtures.pod(fixtures.with_container({"image": image}))

test_allows_pinned_tags_and_digests if {
	count(image_tag.violation) == 0 with input as review("registry.example.com/app:1.4.2")
	count(image_tag.violation) == 0 with input as review("registry.example.com:5000/app:1.4.2")
	count(image_tag.violation) == 0 with input as review("registry.example.com/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef")
}

test_denies_latest_in_every_workload_kind if {
	every kind in workloads.kinds {
		image_tag.violation == {{"msg": "container \"app\" image \"registry.example.com/app:latest\" uses the mutable tag \"latest\"; pin a version or a digest"}} with input as fixtures.review(kind, fixtures.with_container({"image": "registry.example.com/app:latest"}))
	}
}

test_denies_untagged_images if {
	image_tag.violation == {{"msg": "container \"app\" image \"nginx\" has no tag; pin a version or a digest"}} with input as review("nginx")
}

test_a_registry_port_is_not_a_tag if {
	image_tag.violation == {{"msg": "container \"app\" image \"registry.example.com:5000/app\" has no tag; pin a version or a digest"}} with input as review("registry.example.com:5000/app")
}
