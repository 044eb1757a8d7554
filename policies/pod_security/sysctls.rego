# PSS baseline, PSA check sysctls: only the namespaced sysctls each version
# allows.
package tollgate.sysctls

import data.tollgate.lib.pod_security as pss
import rego.v1

match := pss.match

applies(_) := true

allowed(m) := {
	"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.tcp_syncookies",
	"net.ipv4.ping_group_range", "net.ipv4.ip_unprivileged_port_start",
} | {name | some since, names in added; m.minor >= since; some name in names}

added := {
	27: {"net.ipv4.ip_local_reserved_ports"},
	29: {"net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"},
	32: {"net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem"},
	37: {"net.ipv4.tcp_slow_start_after_idle", "net.ipv4.tcp_notsent_lowat"},
}

result(m) := {"reason": "forbidden sysctls", "detail": concat(", ", bad)} if {
	bad := [s.name | some s in pss.list(object.get(pss.pod_context, "sysctls", [])); not s.name in allowed(m)]
	count(bad) > 0
}

failures := [object.union(r, m) | some m in pss.modes; applies(m); r := result(m)]

violation contains pss.violation(failures) if count(failures) > 0
