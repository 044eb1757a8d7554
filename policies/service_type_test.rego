package tollgate.service_type_test

import data.tollgate.service_type
import rego.v1

review(type, namespace) := {
	"review": {
		"kind": {"group": "", "version": "v1", "kind": "Service"},
		"namespace": namespace,
		"operation": "CREATE",
		"object": {"metadata": {"name": "web"}, "spec": {"type": type, "ports": [{"port": 80}]}},
	},
	"parameters": {},
}

test_allows_cluster_ip_in_a_team_namespace if {
	count(service_type.violation) == 0 with input as review("ClusterIP", "app-ml-team")
}

test_denies_node_port_and_load_balancer_in_team_namespaces if {
	every type in ["NodePort", "LoadBalancer"] {
		service_type.violation == {{"msg": sprintf("Service \"web\" of type %s is not allowed in team namespace \"app-ml-team\"; use a ClusterIP Service behind the ingress", [type])}} with input as review(type, "app-ml-team")
	}
}

test_allows_load_balancers_outside_team_namespaces if {
	count(service_type.violation) == 0 with input as review("LoadBalancer", "ingress-nginx")
}

test_the_team_namespace_pattern_is_a_parameter if {
	review_input := object.union(review("NodePort", "team-data"), {"parameters": {"teamNamespacePattern": "^team-"}})
	count(service_type.violation) == 1 with input as review_input
}
