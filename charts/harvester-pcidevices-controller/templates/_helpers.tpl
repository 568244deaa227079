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

{{/* The guard (has() of every step) and the full path of a dotted path below root; (list root path) -> "guard|path". */}}
{{- define "pcidevices.guardedPath" -}}
{{- $cur := index . 0 -}}{{- $guards := list -}}
{{- range (splitList "." (index . 1)) -}}{{- $cur = printf "%s.%s" $cur . -}}{{- $guards = append $guards (printf "has(%s)" $cur) -}}{{- end -}}
{{ join " && " $guards }}|{{ $cur }}
{{- end -}}

{{/* The extended resources (names with a '/', outside devices.kubevirt.io) of the `resources` object at a dotted
path below root, as a sorted-free CEL list of "name=quantity" ([] when none); (list root path), path "" for none. */}}
{{- define "pcidevices.extendedResourcesCEL" -}}
{{- if index . 1 -}}
{{- $gp := splitList "|" (include "pcidevices.guardedPath" .) -}}{{- $g := index $gp 0 -}}{{- $p := index $gp 1 -}}
(({{ $g }} && has({{ $p }}.limits)) ? {{ $p }}.limits.filter(k, k.contains('/') && !k.startsWith('devices.kubevirt.io/')).map(k, 'l:' + k + '=' + string({{ $p }}.limits[k])) : []) + (({{ $g }} && has({{ $p }}.requests)) ? {{ $p }}.requests.filter(k, k.contains('/') && !k.startsWith('devices.kubevirt.io/')).map(k, 'r:' + k + '=' + string({{ $p }}.requests[k])) : [])
{{- else -}}
[]
{{- end -}}
{{- end -}}

{{/* Whether a field of the pod template at a dotted path differs between object and oldObject (absent counts);
(list specPath field). */}}
{{- define "pcidevices.fieldChangedCEL" -}}
{{- $n := splitList "|" (include "pcidevices.guardedPath" (list "object" (printf "%s.%s" (index . 0) (index . 1)))) -}}
{{- $o := splitList "|" (include "pcidevices.guardedPath" (list "oldObject" (printf "%s.%s" (index . 0) (index . 1)))) -}}
(({{ index $n 0 }}) != ({{ index $o 0 }}) || (({{ index $n 0 }}) && {{ index $n 1 }} != {{ index $o 1 }}))
{{- end -}}

{{/* The admission record annotation of root as a CEL string ('' when none). */}}
{{- define "pcidevices.recordCEL" -}}
((has({{ . }}.metadata.annotations) && 'devices.harvesterhci.io/requester' in {{ . }}.metadata.annotations) ? {{ . }}.metadata.annotations['devices.harvesterhci.io/requester'] : '')
{{- end -}}

{{/* One webhook entry for VM-like kinds whose devices live at one path: CREATEs that ask for devices (hostDevices,
gpus, extended resources in domain.resources), name an instancetype or carry an admission record, and UPDATEs that
change any of those or where the pod template may be scheduled (affinity, nodeSelector: pooled pins must hold);
objects being deleted are sent like any other (an update of one is judged too). Arguments:
(list root name path instancetypePath rules configurationPath sideEffects). */}}
{{- define "pcidevices.vmLikeWebhook" -}}
{{- $root := index . 0 -}}
{{- $path := index . 2 -}}
{{- $res := "" -}}{{- if hasSuffix ".devices" $path -}}{{- $res = printf "%s.resources" (trimSuffix ".devices" $path) -}}{{- end -}}
{{- $new := include "pcidevices.deviceNamesCEL" (list "object" $path) -}}
{{- $old := include "pcidevices.deviceNamesCEL" (list "oldObject" $path) -}}
{{- $resNew := include "pcidevices.extendedResourcesCEL" (list "object" $res) -}}
{{- $resOld := include "pcidevices.extendedResourcesCEL" (list "oldObject" $res) -}}
{{- $itNew := include "pcidevices.instancetypeCEL" (list "object" (index . 3)) -}}
{{- $itOld := include "pcidevices.instancetypeCEL" (list "oldObject" (index . 3)) -}}
{{- $recNew := include "pcidevices.recordCEL" "object" -}}
{{- $recOld := include "pcidevices.recordCEL" "oldObject" -}}
{{- $sched := "" -}}
{{- if hasSuffix ".domain.devices" $path -}}
{{- $podSpec := trimSuffix ".domain.devices" $path -}}
{{- $sched = printf "\n        || %s\n        || %s" (include "pcidevices.fieldChangedCEL" (list $podSpec "affinity")) (include "pcidevices.fieldChangedCEL" (list $podSpec "nodeSelector")) -}}
{{- end -}}
- name: {{ index . 1 }}
  admissionReviewVersions: ["v1", "v1beta1"]
  failurePolicy: Fail
  sideEffects: {{ index . 6 }}
  matchPolicy: Equivalent
  timeoutSeconds: {{ $root.Values.webhook.timeoutSeconds }}
  {{- include "pcidevices.clientConfig" (list $root (index . 5)) | nindent 2 }}
  rules:
    {{- toYaml (index . 4) | nindent 4 }}
  matchConditions:
    - name: asks-for-or-changes-host-devices
      expression: >-
        object != null && (request.operation == 'CREATE'
        ? ({{ $new }}).size() > 0 || ({{ $resNew }}).size() > 0 || {{ $itNew }} != '' || {{ $recNew }} != ''
        : oldObject != null && (({{ $new }}).size() != ({{ $old }}).size()
        || ({{ $new }}).exists(x, ({{ $new }}).filter(z, z == x).size() != ({{ $old }}).filter(z, z == x).size())
        || ({{ $resNew }}).size() != ({{ $resOld }}).size()
        || ({{ $resNew }}).exists(x, !(x in ({{ $resOld }})))
        || {{ $itNew }} != {{ $itOld }}
        || {{ $recNew }} != {{ $recOld }}{{ $sched }}))
{{- end -}}

{{/* One webhook entry for what makes virt-controller write a VM for someone (restores, clones, snapshot contents):
every CREATE, and UPDATEs that change the admission record. Arguments: (list root name rules configurationPath). */}}
{{- define "pcidevices.copiesWebhook" -}}
{{- $root := index . 0 -}}
- name: {{ index . 1 }}
  admissionReviewVersions: ["v1", "v1beta1"]
  failurePolicy: Fail
  sideEffects: None
  matchPolicy: Equivalent
  timeoutSeconds: {{ $root.Values.webhook.timeoutSeconds }}
  {{- include "pcidevices.clientConfig" (list $root (index . 3)) | nindent 2 }}
  rules:
    {{- toYaml (index . 2) | nindent 4 }}
  matchConditions:
    - name: created-or-record-changed
      expression: >-
        object != null && (request.operation == 'CREATE' || oldObject == null
        || {{ include "pcidevices.recordCEL" "object" }} != {{ include "pcidevices.recordCEL" "oldObject" }})
{{- end -}}

{{/* The VM-like webhook entries of one configuration (validating or mutating); argument: (list root path prefix).
The validating entries write device holds (webhook/holds.py) except on dry-run: sideEffects NoneOnDryRun. */}}
{{- define "pcidevices.vmLikeWebhooks" -}}
{{- $root := index . 0 -}}{{- $path := index . 1 -}}{{- $prefix := index . 2 -}}
{{- $cu := list "CREATE" "UPDATE" -}}
{{- $effects := ternary "NoneOnDryRun" "None" (eq $prefix "validate") -}}
{{ include "pcidevices.vmLikeWebhook" (list $root (printf "vms.%s.devices.harvesterhci.io" $prefix) "spec.template.spec.domain.devices" "spec.instancetype"
  (list (dict "apiGroups" (list "kubevirt.io") "apiVersions" (list "*") "operations" $cu "resources" (list "virtualmachines" "virtualmachineinstancereplicasets") "scope" "Namespaced")) $path $effects) }}
{{ include "pcidevices.vmLikeWebhook" (list $root (printf "pools.%s.devices.harvesterhci.io" $prefix) "spec.virtualMachineTemplate.spec.template.spec.domain.devices" "spec.virtualMachineTemplate.spec.instancetype"
  (list (dict "apiGroups" (list "pool.kubevirt.io") "apiVersions" (list "*") "operations" $cu "resources" (list "virtualmachinepools") "scope" "Namespaced")) $path $effects) }}
{{ include "pcidevices.vmLikeWebhook" (list $root (printf "vmis.%s.devices.harvesterhci.io" $prefix) "spec.domain.devices" ""
  (list (dict "apiGroups" (list "kubevirt.io") "apiVersions" (list "*") "operations" (ternary $cu (list "CREATE") (eq $prefix "validate")) "resources" (list "virtualmachineinstances") "scope" "Namespaced")) $path $effects) }}
{{ include "pcidevices.copiesWebhook" (list $root (printf "copies.%s.devices.harvesterhci.io" $prefix)
  (list (dict "apiGroups" (list "snapshot.kubevirt.io") "apiVersions" (list "*") "operations" $cu "resources" (ternary (list "virtualmachinerestores" "virtualmachinesnapshotcontents") (list "virtualmachinerestores") (eq $prefix "validate")) "scope" "Namespaced")
        (dict "apiGroups" (list "clone.kubevirt.io") "apiVersions" (list "*") "operations" $cu "resources" (list "virtualmachineclones") "scope" "Namespaced")) $path) }}
{{- if eq $prefix "validate" }}
{{ include "pcidevices.vmLikeWebhook" (list $root "instancetypes.validate.devices.harvesterhci.io" "spec" ""
  (list (dict "apiGroups" (list "instancetype.kubevirt.io") "apiVersions" (list "*") "operations" $cu "resources" (list "virtualmachineinstancetypes" "virtualmachineclusterinstancetypes") "scope" "*")) $path "None") }}
{{- end }}
{{- end -}}
