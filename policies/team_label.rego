# Workloads must say which team owns them: the label (default `team`) is
# what quotas, cost reports and on-call routing key on.
# Parameters: key (string, default "team").
package tollgate.team_label

import data.tollgate.lib.workloads
import rego.v1

match := {"kinds": workloads.kinds}

key := object.get(input.parameters, "key", "team")

violation contains {"msg": msg} if {
	workloads.pod_spec
	not labelled
	msg := sprintf("%s %q must carry the label %q naming the team that owns it", [workloads.kind, workloads.name, key])
}

labelled if count(workloads.obj.metadata.labels[key]) > 0
