{{/* Helpers of the chart's workloads, RBAC and certificates (the webhook configurations' helpers are in _helpers.tpl). */}}

{{- define "pcidevices.labels" -}}
app.kubernetes.io/part-of: pcidevices
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "pcidevices.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion -}}
{{- if .Values.image.digest -}}
{{ printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else -}}
{{ printf "%s:%s" .Values.image.repository $tag }}
{{- end -}}
{{- end -}}

{{/* Username of a ServiceAccount of this release. */}}
{{- define "pcidevices.saUser" -}}
{{- printf "system:serviceaccount:%s:%s" (index . 0).Release.Namespace (index . 1) -}}
{{- end -}}

{{/* Policy settings as environment variables (webhook and controller read the same PCIDEVICES_POLICY_* set). */}}
{{- define "pcidevices.policyEnv" -}}
{{- $agents := concat (list (include "pcidevices.saUser" (list . .Values.agent.serviceAccountName))) .Values.webhook.extraAgentUsernames -}}
{{- $controllers := concat (list (include "pcidevices.saUser" (list . .Values.controller.serviceAccountName))) .Values.policy.extraControllerUsernames -}}
- name: PCIDEVICES_POLICY_AGENT_USERNAMES
  value: {{ join "," $agents | quote }}
- name: PCIDEVICES_POLICY_CONTROLLER_USERNAMES
  value: {{ join "," $controllers | quote }}
{{- /* The takeover identity is trusted only while the chart runs the takeover (its ServiceAccount exists only then;
otherwise whoever may create ServiceAccounts in this namespace could make one of that name and be trusted). */}}
- name: PCIDEVICES_POLICY_MIGRATION_USERNAMES
  value: {{ ternary (include "pcidevices.saUser" (list . .Values.policy.migrationServiceAccountName)) "" .Values.takeover.enabled | quote }}
- name: PCIDEVICES_POLICY_GC_USERNAMES
  value: {{ join "," .Values.policy.garbageCollectorUsernames | quote }}
- name: PCIDEVICES_POLICY_USE_EXEMPT_USERNAMES
  value: {{ join "," .Values.policy.useExemptUsernames | quote }}
- name: PCIDEVICES_POLICY_VIRT_CONTROLLER_USERNAMES
  value: {{ join "," .Values.policy.virtControllerUsernames | quote }}
- name: PCIDEVICES_POLICY_RESOURCE_CLAIM_CONTROLLER_USERNAMES
  value: {{ join "," .Values.policy.resourceClaimControllerUsernames | quote }}
- name: PCIDEVICES_POLICY_RESOURCE_NAMES
  value: {{ .Values.policy.resourceNames | quote }}
- name: PCIDEVICES_POLICY_ENFORCE_CLAIM
  value: {{ .Values.policy.enforce.claim | quote }}
- name: PCIDEVICES_POLICY_ENFORCE_RELEASE
  value: {{ .Values.policy.enforce.release | quote }}
- name: PCIDEVICES_POLICY_ENFORCE_USE
  value: {{ .Values.policy.enforce.use | quote }}
{{- end -}}

{{/* Name of the Secret the webhook serves from, per certificate mode. */}}
{{- define "pcidevices.tlsSecretName" -}}
{{- if eq .Values.certificates.mode "secret" -}}
{{ .Values.certificates.secret.name }}
{{- else if eq .Values.certificates.mode "certManager" -}}
{{ printf "%s-tls" .Values.webhook.service.name }}
{{- else -}}
{{ .Values.certificates.selfSigned.secretName }}
{{- end -}}
{{- end -}}

{{/* Annotations of the webhook configurations: cert-manager's CA injection in certManager mode. */}}
{{- define "pcidevices.webhookConfigurationAnnotations" -}}
{{- if eq .Values.certificates.mode "certManager" -}}
annotations:
  cert-manager.io/inject-ca-from: {{ printf "%s/%s" .Release.Namespace .Values.webhook.service.name }}
{{- end -}}
{{- end -}}
