# No NodePort or LoadBalancer Services in team namespaces: they open a port
# on every node or a cloud load balancer, past the ingress and its auth.
# Parameters: teamNamespacePattern (regex, default "^app-[a-z0-9-]+-team$").
package tollgate.service_type

import rego.v1

match := {"kinds": ["Service"]}

pattern := object.get(input.parameters, "teamNamespacePattern", "^app-[a-z0-9-]+-team$")

violation contains {"msg": msg} if {
	service_type := input.review.object.spec.type
	service_type in {"NodePort", "LoadBalancer"}
	regex.match(pattern, input.review.namespace)
	msg := sprintf("Service %q of type %s is not allowed in team namespace %q; use a ClusterIP Service behind the ingress", [input.review.object.metadata.name, service_type, input.review.namespace])
}
