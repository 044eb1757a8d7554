# PSS baseline, PSA check appArmorProfile: no AppArmor profile but the
# runtime's default or a localhost one, in the fields or the beta annotations.
package tollgate.app_armor_profile

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(_) := true

bad_type(sc) := t if {
	pss.set(sc, "appArmorProfile")
	t := object.get(sc.appArmorProfile, "type", "")
	not t in {"RuntimeDefault", "Localhost"}
}

pod_bad := count([1 | bad_type(pss.pod_context)]) > 0

bad_containers := [c.name | some c in pss.containers; bad_type(pss.context(c))]

bad_annotations := sort([sprintf("%s=\"%s\"", [k, v]) |
	some k, v in pss.annotations
	startswith(k, "container.apparmor.security.beta.kubernetes.io/")
	not allowed_annotation(v)
])

allowed_annotation(v) if v in {"", "runtime/default"}

allowed_annotation(v) if startswith(v, "localhost/")

bad_types := {t | t := bad_type(pss.pod_context)} | {t | some c in pss.containers; t := bad_type(pss.context(c))}

bad_values := array.concat(sort(bad_types), bad_annotations)

setters := array.concat(
	pss.who(pod_bad, bad_containers),
	[pss.plural("annotation", "annotations", count(bad_annotations)) | count(bad_annotations) > 0],
)

result(_) := {
	"reason": pss.plural("forbidden AppArmor profile", "forbidden AppArmor profiles", count(bad_values)),
	"detail": sprintf("%s must not set AppArmor profile type to %s", [concat(" and ", setters), pss.quoted(bad_values)]),
} if count(bad_values) > 0

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
