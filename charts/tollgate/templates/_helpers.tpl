{{/* Names. */}}
{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The webhook's Deployment, Service and (by default) ServiceAccount. */}}
{{- define "tollgate.webhookName" -}}
{{- printf "%s-webhook" (include "tollgate.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tollgate.webhookName" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tollgate.tlsSecretName" -}}
{{- default (printf "%s-webhook-tls" (include "tollgate.fullname" .)) .Values.certificates.secretName }}
{{- end }}

{{/* Whether the webhook manages its own certificate (not with cert-manager). */}}
{{- define "tollgate.manageCerts" -}}
{{- if and .Values.certificates.manage (not .Values.certManager.enabled) }}true{{ end }}
{{- end }}

{{/* Whether the webhook watches policy ConfigMaps. */}}
{{- define "tollgate.watchConfigMaps" -}}
{{- $p := .Values.policies }}
{{- if or $p.watchConfigMaps $p.extraPolicies $p.constraintTemplates $p.constraints }}true{{ end }}
{{- end }}

{{- define "tollgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.labels" -}}
{{ include "tollgate.commonLabels" . }}
app.kubernetes.io/component: webhook
{{- end }}

{{/* Without app.kubernetes.io/component. */}}
{{- define "tollgate.commonLabels" -}}
helm.sh/chart: {{ include "tollgate.chart" . }}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end }}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: webhook
{{- end }}

{{/* repository:tag or repository@digest. */}}
{{- define "tollgate.imageRef" -}}
{{- $image := index . 0 }}
{{- $root := index . 1 }}
{{- if $image.digest }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- else }}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* Every namespace the apiserver does not send to the webhook. */}}
{{/* The users whose requests are neither sent to nor judged by the webhook:
admission.exemptUsers and the webhook's own ServiceAccount, as JSON. */}}
{{- define "tollgate.exemptUsers" -}}
{{- $own := printf "system:serviceaccount:%s:%s" .Release.Namespace (include "tollgate.serviceAccountName" .) }}
{{- toJson (concat .Values.admission.exemptUsers (list $own) | uniq) }}
{{- end }}

{{- define "tollgate.excludedNamespaces" -}}
{{- $all := concat .Values.admission.excludedNamespaces (list .Release.Namespace) | uniq }}
{{- toJson $all }}
{{- end }}

{{/* The RBAC resource of a synced kind: `resource`, else a plural of the
kind as kube-rs's ApiResource::from_gvk makes it. */}}
{{- define "tollgate.plural" -}}
{{- $k := lower . }}
{{- if has $k (list "endpoints" "endpointslices") }}
{{- $k }}
{{- else if or (hasSuffix "s" $k) (hasSuffix "x" $k) (hasSuffix "z" $k) (hasSuffix "ch" $k) (hasSuffix "sh" $k) }}
{{- printf "%ses" $k }}
{{- else if and (hasSuffix "y" $k) (not (regexMatch "[aeiou]y$" $k)) }}
{{- printf "%sies" (trimSuffix "y" $k) }}
{{- else }}
{{- printf "%ss" $k }}
{{- end }}
{{- end }}

{{/* policy/v1 PodDisruptionBudget from 1.21 on, else policy/v1beta1. */}}

