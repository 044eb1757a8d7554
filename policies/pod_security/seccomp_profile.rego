# PSS baseline and restricted, PSA checks seccompProfile_baseline and
# seccompProfile_restricted: no seccomp profile but RuntimeDefault or Localhost
# (the alpha annotations before v1.19); restricted from v1.19 also requires
# one on the pod or on every container (Windows pods pass from v1.25).
package tollgate.seccomp_profile

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(m) if not pss.windows_exempt(m)

applies(m) if m.level == "baseline"

valid_types := {"RuntimeDefault", "Localhost"}

profile_type(sc) := object.get(sc.seccompProfile, "type", "") if pss.set(sc, "seccompProfile")

pod_type := profile_type(pss.pod_context)

pod_bad := count([1 | t := pod_type; not t in valid_types]) > 0

pod_valid := count([1 | pod_type in valid_types]) > 0

explicit := [c.name | some c in pss.containers; not profile_type(pss.context(c)) in valid_types]

explicit_values := {t | t := pod_type; pod_bad} | {t | some c in pss.containers; t := profile_type(pss.context(c)); not t in valid_types}

implicit := [c.name | some c in pss.containers; not pss.set(pss.context(c), "seccompProfile"); not pod_valid]

by_fields := {
	"reason": "seccompProfile",
	"detail": sprintf("%s must not set securityContext.seccompProfile.type to %s", [pss.setters(pod_bad, explicit), pss.quoted(sort(explicit_values))]),
} if count(explicit_values) > 0

# v1.0-v1.18: the alpha annotations.
result(m) := {
	"reason": "seccompProfile",
	"detail": sprintf("forbidden %s %s", [pss.plural("annotation", "annotations", count(bad)), concat(", ", sort(bad))]),
} if {
	m.minor < 19
	bad := {sprintf("%s=\"%s\"", [k, v]) |
		some k in array.concat(["seccomp.security.alpha.kubernetes.io/pod"], [concat("", ["container.seccomp.security.alpha.kubernetes.io/", c.name]) | some c in pss.containers])
		v := pss.annotations[k]
		not valid_annotation(v)
	}
	count(bad) > 0
}

result(m) := by_fields if {
	m.minor >= 19
	m.level == "baseline"
}

result(m) := r if {
	m.minor >= 19
	m.level == "restricted"
	r := restricted
}

restricted := r if {
	r := by_fields
} else := {
	"reason": "seccompProfile",
	"detail": sprintf("pod or %s must set securityContext.seccompProfile.type to \"RuntimeDefault\" or \"Localhost\"", [pss.container_names(implicit)]),
} if count(implicit) > 0

valid_annotation(v) if v in {"runtime/default", "docker/default"}

valid_annotation(v) if startswith(v, "localhost/")

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
