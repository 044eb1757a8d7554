{{/*
The webhook's config file (webhook/config/example.yaml documents every
key; the binary rejects unknown ones). `listen` is 0.0.0.0 so the Service
reaches it; `ownNamespace` is left to $POD_NAMESPACE (downward API); the
cluster connection is the in-cluster service account.
*/}}
{{- define "tollgate.config" -}}
{{- $v := .Values }}
{{- $fullname := include "tollgate.fullname" . }}
{{- $config := dict "listen" "0.0.0.0:8443" }}
{{- if $v.certManager.enabled }}
{{- $_ := set $config "tls" (dict "certFile" "/etc/tollgate/tls/tls.crt" "keyFile" "/etc/tollgate/tls/tls.key") }}
{{- $_ := set $config "certificates" (dict "manage" false) }}
{{- else if $v.certificates.manage }}
{{- $_ := set $config "certificates" (dict
      "manage" true
      "secretName" (include "tollgate.tlsSecretName" .)
      "serviceName" (include "tollgate.webhookName" .)
      "mutatingWebhookConfiguration" $fullname
      "validatingWebhookConfiguration" $fullname) }}
{{- else }}
{{- fail "certificates.manage=false needs certManager.enabled=true: the webhook has no other source for its serving certificate" }}
{{- end }}
{{- $sync := list }}
{{- range $v.policies.sync }}
{{- $sync = append $sync (dict "group" (default "" .group) "version" .version "kind" .kind) }}
{{- end }}
{{- $policies := dict
      "exemptNamespaces" $v.admission.excludedNamespaces
      "exemptUsers" (include "tollgate.exemptUsers" . | fromJsonArray)
      "exemptGroups" $v.admission.exemptGroups
      "evaluationTimeoutMs" $v.policies.evaluationTimeoutMs
      "decisionCacheEntries" $v.policies.decisionCacheEntries
      "overrides" $v.policies.overrides
      "watchConfigMaps" (eq (include "tollgate.watchConfigMaps" .) "true")
      "watchConstraintTemplates" $v.policies.watchConstraintTemplates
      "sync" $sync }}
{{- $_ := set $config "policies" $policies }}
{{- $_ := set $config "teams" $v.teams }}
{{- $sidecar := dict
      "enabled" $v.mutate.sidecar.enabled
      "workspaceLabel" $v.mutate.sidecar.workspaceLabel
      "mode" $v.mutate.sidecar.mode
      "image" (include "tollgate.imageRef" (list $v.proxy.image .))
      "ports" $v.mutate.sidecar.ports
      "resources" $v.proxy.resources
      "certSecret" $v.mutate.sidecar.certSecret
      "configMap" $v.proxy.configMapName }}
{{- if $v.mutate.sidecar.ownerFrom }}
{{- $_ := set $sidecar "ownerFrom" $v.mutate.sidecar.ownerFrom }}
{{- end }}
{{- if $v.mutate.sidecar.certVolume }}
{{- $_ := set $sidecar "certVolume" $v.mutate.sidecar.certVolume }}
{{- end }}
{{- $_ := set $config "mutate" (dict
      "enabled" $v.mutate.enabled
      "security" $v.mutate.security
      "gpu" $v.mutate.gpu
      "sidecar" $sidecar) }}
{{- if ge (int $v.config.limits.requestTimeoutMs) (mul (int $v.admission.timeoutSeconds) 1000 | int) }}
{{- fail (printf "config.limits.requestTimeoutMs (%v) must be below admission.timeoutSeconds (%v) * 1000, so that the apiserver gets the webhook's answer rather than a timeout" $v.config.limits.requestTimeoutMs $v.admission.timeoutSeconds) }}
{{- end }}
{{- $_ := set $config "audit" (dict
      "intervalSeconds" $v.audit.intervalSeconds
      "kinds" $v.audit.kinds
      "workers" $v.audit.workers
      "maxResultsPerReport" $v.audit.maxResultsPerReport
      "logPerPolicy" $v.audit.logPerPolicy
      "constraintViolationsLimit" $v.audit.constraintViolationsLimit
      "reports" $v.audit.reports) }}
{{- $_ := set $config "limits" $v.config.limits }}
{{- $_ := set $config "log" $v.config.log }}
{{- if $v.config.tracing }}
{{- $_ := set $config "tracing" $v.config.tracing }}
{{- end }}
{{- toYaml $config }}
{{- end }}
