{{/* Usernames of node agents: the agent ServiceAccount plus any extra ones, as a CEL list literal. */}}
{{- define "pcidevices.agentUsernamesCEL" -}}
{{- $names := list (printf "system:serviceaccount:%s:%s" .Release.Namespace .Values.agent.serviceAccountName) -}}
{{- $names = concat $names .Values.webhook.extraAgentUsernames -}}
[{{- range $i, $n := $names }}{{ if $i }}, {{ end }}{{ $n | squote }}{{ end -}}]
{{- end -}}

{{/* clientConfig for one webhook path. */}}
{{- define "pcidevices.clientConfig" -}}
{{- $root := index . 0 -}}{{- $path := index . 1 -}}
clientConfig:
  {{- if $root.Values.webhook.url }}
  url: {{ printf "%s%s" (trimSuffix "/" $root.Values.webhook.url) $path | quote }}
  {{- else }}
  service:
    name: {{ $root.Values.webhook.service.name }}
    namespace: {{ $root.Release.Namespace }}
    port: {{ $root.Values.webhook.service.port }}
    path: {{ $path | quote }}
  {{- end }}
  {{- with $root.Values.webhook.caBundle }}
  caBundle: {{ . }}
  {{- end }}
{{- end -}}
