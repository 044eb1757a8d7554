# Images must be pinned: `:latest` and untagged images change under a
# running workload and make rollbacks lie. A digest (`@sha256:...`) is the
# strongest pin and always passes.
package tollgate.image_tag

import data.tollgate.lib.workloads
import rego.v1

match := {"kinds": workloads.kinds}

violation contains {"msg": msg} if {
	some entry in workloads.containers
	image := entry.container.image
	not contains(image, "@")
	tag(image) == "latest"
	msg := sprintf("container %q image %q uses the mutable tag \"latest\"; pin a version or a digest", [entry.container.name, image])
}

violation contains {"msg": msg} if {
	some entry in workloads.containers
	image := entry.container.image
	not contains(image, "@")
	not tag(image)
	msg := sprintf("container %q image %q has no tag; pin a version or a digest", [entry.container.name, image])
}

# The tag is what follows the last ':' of the last path segment (a ':'
# earlier on is a registry port).
tag(image) := t if {
	segments := split(image, "/")
	last := segments[count(segments) - 1]
	parts := split(last, ":")
	count(parts) == 2
	t := parts[1]
}
