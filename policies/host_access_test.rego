package tollgate.host_access_test

import data.tollgate.host_access
import data.tollgate.lib.fixtures
import data.tollgate.lib.workloads
import rego.v1

test_allows_a_pod_without_host_access if {
	spec := object.union(fixtures.spec, {"volumes": [{"name": "data", "emptyDir": {}}]})
	count(host_access.violation) == 0 with input as fixtures.pod(spec)
}

test_denies_each_host_namespace_in_every_workload_kind if {
	every kind in workloads.kinds {
		every field in ["hostNetwork", "hostPID", "hostIPC"] {
			spec := object.union(fixtures.spec, {field: true})
			host_access.violation == {{"msg": sprintf("%s \"trainer\" must not set %s: true", [kind, field])}} with input as fixtures.review(kind, spec)
		}
	}
}

test_denies_a_host_path_volume if {
	spec := object.union(fixtures.spec, {"volumes": [{"name": "docker", "hostPath": {"path": "/var/run/docker.sock"}}]})
	host_access.violation == {{"msg": "volume \"docker\" must not mount the node's path \"/var/run/docker.sock\" (hostPath)"}} with input as fixtures.review("Deployment", spec)
}

test_host_network_false_is_allowed if {
	spec := object.union(fixtures.spec, {"hostNetwork": false})
	count(host_access.violation) == 0 with input as fixtures.pod(spec)
}
