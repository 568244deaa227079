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

{{/* Part 2. The deviceNames of the hostDevices and gpus at a dotted path below root, as a CEL list (every step
guarded with has(), so objects without devices give []). Arguments: (list root path). */}}
{{- define "pcidevices.deviceNamesCEL" -}}
{{- $cur := index . 0 -}}{{- $guards := list -}}
{{- range (splitList "." (index . 1)) -}}{{- $cur = printf "%s.%s" $cur . -}}{{- $guards = append $guards (printf "has(%s)" $cur) -}}{{- end -}}
{{- $g := join " && " $guards -}}
(({{ $g }} && has({{ $cur }}.hostDevices)) ? {{ $cur }}.hostDevices.map(d, has(d.deviceName) ? d.deviceName : '') : []) + (({{ $g }} && has({{ $cur }}.gpus)) ? {{ $cur }}.gpus.map(d, has(d.deviceName) ? d.deviceName : '') : [])
{{- end -}}

{{/* The instancetype name at a dotted path below root as a CEL string ('' when none); (list root path), path "" for none. */}}
{{- define "pcidevices.instancetypeCEL" -}}
{{- if index . 1 -}}
{{- $cur := index . 0 -}}{{- $guards := list -}}
{{- range (splitList "." (index . 1)) -}}{{- $cur = printf "%s.%s" $cur . -}}{{- $guards = append $guards (printf "has(%s)" $cur) -}}{{- end -}}
(({{ join " && " $guards }} && has({{ $cur }}.name)) ? ({{ $cur }}.name + (has({{ $cur }}.kind) ? '/' + {{ $cur }}.kind : '')) : '')
{{- else -}}
''
{{- end -}}
{{- end -}}

{{/* One webhook entry for VM-like kinds whose devices live at one path: CREATEs that name devices (or an
instancetype) and UPDATEs that change them as a multiset; objects being deleted never. Arguments:
(list root name path instancetypePath rules configurationPath). */}}
{{- define "pcidevices.vmLikeWebhook" -}}
{{- $root := index . 0 -}}
{{- $new := include "pcidevices.deviceNamesCEL" (list "object" (index . 2)) -}}
{{- $old := include "pcidevices.deviceNamesCEL" (list "oldObject" (index . 2)) -}}
{{- $itNew := include "pcidevices.instancetypeCEL" (list "object" (index . 3)) -}}
{{- $itOld := include "pcidevices.instancetypeCEL" (list "oldObject" (index . 3)) -}}
- name: {{ index . 1 }}
  admissionReviewVersions: ["v1", "v1beta1"]
  failurePolicy: Fail
  sideEffects: None
  matchPolicy: Equivalent
  timeoutSeconds: {{ $root.Values.webhook.timeoutSeconds }}
  {{- include "pcidevices.clientConfig" (list $root (index . 5)) | nindent 2 }}
  rules:
    {{- toYaml (index . 4) | nindent 4 }}
  matchConditions:
    - name: not-being-deleted
      expression: >-
        request.operation == 'DELETE' || object == null || !has(object.metadata.deletionTimestamp)
    - name: names-or-changes-host-devices
      expression: >-
        object != null && (request.operation == 'CREATE'
        ? ({{ $new }}).size() > 0 || {{ $itNew }} != ''
        : oldObject != null && (({{ $new }}).size() != ({{ $old }}).size()
        || ({{ $new }}).exists(x, ({{ $new }}).filter(z, z == x).size() != ({{ $old }}).filter(z, z == x).size())
        || {{ $itNew }} != {{ $itOld }}))
{{- end -}}

{{/* Usernames of KubeVirt's virt-controller as a CEL list literal. */}}
{{- define "pcidevices.virtControllersCEL" -}}
{{- $names := .Values.policy.virtControllerUsernames | default (list "system:serviceaccount:kubevirt:kubevirt-controller" "system:serviceaccount:harvester-system:kubevirt-controller") -}}
[{{- range $i, $n := $names }}{{ if $i }}, {{ end }}{{ $n | squote }}{{ end -}}]
{{- end -}}

{{/* The VM-like webhook entries of one configuration (validating or mutating); argument: (list root path kinds) where
kinds leaves out VMIs for the mutator. */}}
{{- define "pcidevices.vmLikeWebhooks" -}}
{{- $root := index . 0 -}}{{- $path := index . 1 -}}{{- $prefix := index . 2 -}}
{{- $cu := list "CREATE" "UPDATE" -}}
{{ include "pcidevices.vmLikeWebhook" (list $root (printf "vms.%s.devices.harvesterhci.io" $prefix) "spec.template.spec.domain.devices" "spec.instancetype"
  (list (dict "apiGroups" (list "kubevirt.io") "apiVersions" (list "*") "operations" $cu "resources" (list "virtualmachines" "virtualmachineinstancereplicasets") "scope" "Namespaced")) $path) }}
{{ include "pcidevices.vmLikeWebhook" (list $root (printf "pools.%s.devices.harvesterhci.io" $prefix) "spec.virtualMachineTemplate.spec.template.spec.domain.devices" "spec.virtualMachineTemplate.spec.instancetype"
  (list (dict "apiGroups" (list "pool.kubevirt.io") "apiVersions" (list "*") "operations" $cu "resources" (list "virtualmachinepools") "scope" "Namespaced")) $path) }}
{{- if eq $prefix "validate" }}
{{ include "pcidevices.vmLikeWebhook" (list $root "vmis.validate.devices.harvesterhci.io" "spec.domain.devices" ""
  (list (dict "apiGroups" (list "kubevirt.io") "apiVersions" (list "*") "operations" (list "CREATE") "resources" (list "virtualmachineinstances") "scope" "Namespaced")) $path) }}
{{ include "pcidevices.vmLikeWebhook" (list $root "instancetypes.validate.devices.harvesterhci.io" "spec" ""
  (list (dict "apiGroups" (list "instancetype.kubevirt.io") "apiVersions" (list "*") "operations" $cu "resources" (list "virtualmachineinstancetypes" "virtualmachineclusterinstancetypes") "scope" "*")) $path) }}
{{- end }}
{{- end -}}
