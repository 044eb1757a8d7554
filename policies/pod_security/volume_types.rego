# PSS restricted, PSA check restrictedVolumes: only volume types that cannot
# reach the node or a network share by themselves.
package tollgate.volume_types

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(m) if m.level == "restricted"

allowed := {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "image", "persistentVolumeClaim", "projected", "secret"}

# The types PSA names; any other is "unknown".
known := {
	"hostPath", "gcePersistentDisk", "awsElasticBlockStore", "gitRepo", "nfs", "iscsi", "glusterfs", "rbd",
	"flexVolume", "cinder", "cephfs", "flocker", "fc", "azureFile", "vsphereVolume", "quobyte", "azureDisk",
	"photonPersistentDisk", "portworxVolume", "scaleIO", "storageos",
}

# A volume with no source at all is an emptyDir: the apiserver defaults it
# so before any webhook sees it (only `tollgate review` sees it bare).
restricted(v) if {
	every t in allowed {
		not pss.set(v, t)
	}
	count(object.remove(v, ["name"])) > 0
}

type_of(v) := t if {
	some t in known
	pss.set(v, t)
} else := "unknown"

result(_) := {
	"reason": "restricted volume types",
	"detail": sprintf("%s %s %s", [
		pss.named("volume", "volumes", bad), pss.plural("uses", "use", count(bad)),
		pss.named("restricted volume type", "restricted volume types", sort(types)),
	]),
} if {
	bad := [v.name | some v in pss.volumes; restricted(v)]
	count(bad) > 0
	types := {type_of(v) | some v in pss.volumes; restricted(v)}
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
