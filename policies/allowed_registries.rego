# Images only from allowed registries. Short Docker Hub names are expanded
# first, as the container runtime does: `nginx` is
# `docker.io/library/nginx`, `team/app` is `docker.io/team/app`.
# Parameters: registries (list of prefixes, e.g. "registry.example.com/").
package tollgate.allowed_registries

import data.tollgate.lib.workloads
import rego.v1

match := {"kinds": workloads.kinds}

default_registries := ["registry.k8s.io/", "ghcr.io/", "quay.io/", "docker.io/library/"]

registries := object.get(input.parameters, "registries", default_registries)

violation contains {"msg": msg} if {
	some entry in workloads.containers
	image := entry.container.image
	not allowed(canonical(image))
	msg := sprintf("container %q image %q is not from an allowed registry (allowed: %s)", [entry.container.name, image, concat(", ", registries)])
}

allowed(image) if {
	some prefix in registries
	startswith(image, prefix)
}

# A first path segment with a dot or a colon, or `localhost`, is a registry.
canonical(image) := image if {
	parts := split(image, "/")
	count(parts) > 1
	is_registry(parts[0])
}

canonical(image) := concat("/", ["docker.io", image]) if {
	parts := split(image, "/")
	count(parts) > 1
	not is_registry(parts[0])
}

canonical(image) := concat("/", ["docker.io/library", image]) if {
	count(split(image, "/")) == 1
}

is_registry(segment) if contains(segment, ".")

is_registry(segment) if contains(segment, ":")

is_registry(segment) if segment == "localhost"
