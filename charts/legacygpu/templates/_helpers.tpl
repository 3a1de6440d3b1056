{{/*
Naming, labels, images and security contexts shared by every template.

Names are truncated to 63 characters (the DNS label limit); every component name is
"<fullname>-<component>" with its own helper so that templates, NOTES.txt and tests
agree on it.
*/}}

{{- define "legacygpu.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "legacygpu.fullname" -}}
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

{{- define "legacygpu.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* "<fullname>-<suffix>", truncated. Call with (list $ "suffix"). */}}
{{- define "legacygpu.componentName" -}}
{{- $ctx := index . 0 }}
{{- printf "%s-%s" (include "legacygpu.fullname" $ctx | trunc (int (sub 62 (len (index . 1))))) (index . 1) | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component. Call with (list $ "component"). */}}
{{- define "legacygpu.selectorLabels" -}}
{{- $ctx := index . 0 -}}
app.kubernetes.io/name: {{ include "legacygpu.name" $ctx }}
app.kubernetes.io/instance: {{ $ctx.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{/* All labels of one component's objects. Call with (list $ "component"). */}}
{{- define "legacygpu.labels" -}}
{{- $ctx := index . 0 -}}
helm.sh/chart: {{ include "legacygpu.chart" $ctx }}
{{ include "legacygpu.selectorLabels" . }}
app.kubernetes.io/version: {{ $ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ $ctx.Release.Service }}
app.kubernetes.io/part-of: legacygpu
{{- with $ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Object names, one per component. */}}
{{- define "legacygpu.operator.fullname" -}}{{ include "legacygpu.componentName" (list . "operator") }}{{- end }}
{{- define "legacygpu.api.fullname" -}}{{ include "legacygpu.componentName" (list . "api") }}{{- end }}
{{- define "legacygpu.nodeAgent.fullname" -}}{{ include "legacygpu.componentName" (list . "node-agent") }}{{- end }}
{{- define "legacygpu.worker.fullname" -}}{{ include "legacygpu.componentName" (list . "worker") }}{{- end }}
{{- define "legacygpu.operator.clusterRole.name" -}}{{ include "legacygpu.operator.fullname" . }}{{- end }}
{{- define "legacygpu.operator.leaderRole.name" -}}{{ include "legacygpu.componentName" (list . "operator-leader") }}{{- end }}
{{- define "legacygpu.nodeAgent.clusterRole.name" -}}{{ include "legacygpu.nodeAgent.fullname" . }}{{- end }}
{{- define "legacygpu.api.role.name" -}}{{ include "legacygpu.api.fullname" . }}{{- end }}
{{- define "legacygpu.worker.role.name" -}}{{ include "legacygpu.worker.fullname" . }}{{- end }}

{{- define "legacygpu.operator.leaseName" -}}
{{- default (include "legacygpu.operator.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/* ServiceAccount names: the given name, else the component's name (created or not). */}}
{{- define "legacygpu.operator.serviceAccountName" -}}
{{- default (include "legacygpu.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- end }}
{{- define "legacygpu.api.serviceAccountName" -}}
{{- default (include "legacygpu.api.fullname" .) .Values.api.serviceAccount.name }}
{{- end }}
{{- define "legacygpu.nodeAgent.serviceAccountName" -}}
{{- default (include "legacygpu.nodeAgent.fullname" .) .Values.nodeAgent.serviceAccount.name }}
{{- end }}
{{- define "legacygpu.worker.serviceAccountName" -}}
{{- default (include "legacygpu.worker.fullname" .) .Values.worker.serviceAccount.name }}
{{- end }}

{{/* Namespaces of the workers, as a JSON list: worker.namespaces, else operator.watchNamespaces, else the release's. */}}
{{- define "legacygpu.worker.namespaces" -}}
{{- $ns := .Values.worker.namespaces }}
{{- if not $ns }}{{ $ns = .Values.operator.watchNamespaces }}{{ end }}
{{- if not $ns }}{{ $ns = list .Release.Namespace }}{{ end }}
{{- $ns | uniq | toJson }}
{{- end }}

{{/* Namespace of the InferenceCluster the facade serves. */}}
{{- define "legacygpu.api.clusterNamespace" -}}
{{- default .Release.Namespace .Values.api.clusterNamespace }}
{{- end }}

{{/* The Secret holding the API token and its key. */}}
{{- define "legacygpu.api.secretName" -}}
{{- default (include "legacygpu.componentName" (list . "api-token")) .Values.api.auth.existingSecret }}
{{- end }}

{{/* An image reference. Call with (list $ .Values.images.x). */}}
{{- define "legacygpu.image" -}}
{{- $ctx := index . 0 }}
{{- $img := index . 1 }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default $ctx.Chart.AppVersion $img.tag) }}
{{- end }}
{{- end }}

{{- define "legacygpu.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ if kindIs "map" . }}{{ .name }}{{ else }}{{ . }}{{ end }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Least-privilege container securityContext (operator, facade): the images' non-root user,
read-only root file system, no privilege escalation, no capabilities, RuntimeDefault seccomp.
Meets the "restricted" Pod Security Standard. Call with the component's override (a map).
*/}}
{{- define "legacygpu.securityContext" -}}
{{- if . }}
{{- toYaml . }}
{{- else -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
{{- end }}

{{- define "legacygpu.podSecurityContext" -}}
{{- if . }}
{{- toYaml . }}
{{- else -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end }}
{{- end }}

{{/*
The node agent's container securityContext, as tight as its job allows:
- root (uid 0): the kubelet's device-plugin directory and kubelet.sock are root's; root owns
  them, so no capability is needed (all are dropped);
- read-only root file system, RuntimeDefault seccomp;
- privileged only with the `opencl` health check: opening /dev/dri/renderD* from an
  unprivileged container is refused by its device cgroup, whatever the file mode.
*/}}
{{- define "legacygpu.nodeAgent.securityContext" -}}
{{- if .Values.nodeAgent.securityContext }}
{{- toYaml .Values.nodeAgent.securityContext }}
{{- else if has "opencl" .Values.nodeAgent.healthChecks -}}
privileged: true
readOnlyRootFilesystem: true
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- else -}}
privileged: false
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsUser: 0
runAsGroup: 0
runAsNonRoot: false
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end }}
{{- end }}

{{/* The default node affinity of the agent: NFD's AMD PCI label, or the agent's own label. */}}
{{- define "legacygpu.nodeAgent.affinity" -}}
{{- if .Values.nodeAgent.affinity }}
{{- toYaml .Values.nodeAgent.affinity }}
{{- else if not .Values.nodeAgent.nodeSelector -}}
nodeAffinity:
  requiredDuringSchedulingIgnoredDuringExecution:
    nodeSelectorTerms:
      - matchExpressions:
          - {key: feature.node.kubernetes.io/pci-1002.present, operator: In, values: ["true"]}
      - matchExpressions:
          - {key: legacygpu.io/gpu.present, operator: In, values: ["true"]}
{{- end }}
{{- end }}

{{/* A PodDisruptionBudget spec body. Call with the component's podDisruptionBudget values. */}}
{{- define "legacygpu.pdbSpec" -}}
{{- if ne (toString .maxUnavailable) "" }}
maxUnavailable: {{ .maxUnavailable }}
{{- else }}
minAvailable: {{ .minAvailable }}
{{- end }}
{{- end }}

{{/*
The API token the chart stores: api.auth.token, else the one already in the cluster's Secret
(so `helm upgrade` keeps a generated token), else a new random one.
*/}}
{{- define "legacygpu.api.tokenValue" -}}
{{- if .Values.api.auth.token }}
{{- .Values.api.auth.token }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "legacygpu.api.secretName" .) }}
{{- $key := .Values.api.auth.secretKey }}
{{- if and $existing $existing.data (hasKey $existing.data $key) }}
{{- index $existing.data $key | b64dec }}
{{- else }}
{{- randAlphaNum 43 }}
{{- end }}
{{- end }}
{{- end }}

{{/* The admin token for the chart's Secret: the given one, else the one already stored, else a new one. */}}
{{- define "legacygpu.api.adminTokenValue" -}}
{{- if .Values.api.auth.adminToken }}
{{- .Values.api.auth.adminToken }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "legacygpu.api.secretName" .) }}
{{- $key := .Values.api.auth.adminSecretKey }}
{{- if and $existing $existing.data (hasKey $existing.data $key) }}
{{- index $existing.data $key | b64dec }}
{{- else }}
{{- randAlphaNum 43 }}
{{- end }}
{{- end }}
{{- end }}
