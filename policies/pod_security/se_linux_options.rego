# PSS baseline, PSA check seLinuxOptions: no SELinux user or role, and no type
# but the container ones (container_engine_t too from v1.31).
package tollgate.se_linux_options

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(_) := true

allowed_types(m) := {"", "container_t", "container_init_t", "container_kvm_t"} if m.minor < 31 else := {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}

options(sc) := o if {
	o := sc.seLinuxOptions
	is_object(o)
}

bad_type(o, m) := t if {
	t := object.get(o, "type", "")
	not t in allowed_types(m)
}

invalid(o, m) if bad_type(o, m)

invalid(o, _) if object.get(o, "user", "") != ""

invalid(o, _) if object.get(o, "role", "") != ""

all_options := array.concat([o | o := options(pss.pod_context)], [o | some c in pss.containers; o := options(pss.context(c))])

set_anywhere(field) if {
	some o in all_options
	object.get(o, field, "") != ""
}

result(m) := {
	"reason": "seLinuxOptions",
	"detail": sprintf("%s set forbidden securityContext.seLinuxOptions: %s", [pss.setters(bad_pod, bad), concat("; ", problems)]),
} if {
	bad_pod := count([1 | invalid(options(pss.pod_context), m)]) > 0
	bad := [c.name | some c in pss.containers; invalid(options(pss.context(c)), m)]
	some any in [bad_pod, count(bad) > 0]
	any
	types := {t | some o in all_options; t := bad_type(o, m)}
	problems := array.concat(
		[pss.named("type", "types", sort(types)) | count(types) > 0],
		[sprintf("%s may not be set", [f]) | some f in ["user", "role"]; set_anywhere(f)],
	)
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
