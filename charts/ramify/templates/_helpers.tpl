{{/*
Labels every object of the chart carries. app.kubernetes.io/name is "ramify" on everything
Ramify runs, chart-made or operator-made, so `-l app.kubernetes.io/name=ramify` finds it all.
*/}}
{{- define "ramify.labels" -}}
app.kubernetes.io/name: ramify
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end }}

{{/*
Selector labels of one component; call with (dict "root" $ "component" "operator").
The operator finds proxy Pods by app.kubernetes.io/component=proxy (its --proxy-selector
default), and the NetworkPolicies match components the same way.
*/}}
{{- define "ramify.selectorLabels" -}}
app.kubernetes.io/name: ramify
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Labels of one component's objects: the common ones plus its component. */}}
{{- define "ramify.componentLabels" -}}
{{ include "ramify.labels" .root }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
<registry>/<repository>:<tag> of one of Ramify's images; call with
(dict "root" $ "image" .Values.operator.image). The tag is the component's own, else
image.tag, else the chart's appVersion.
*/}}
{{- define "ramify.image" -}}
{{- $tag := .image.tag | default .root.Values.image.tag | default .root.Chart.AppVersion -}}
{{- if .root.Values.image.registry -}}
{{ printf "%s/%s:%s" (trimSuffix "/" .root.Values.image.registry) .image.repository $tag }}
{{- else -}}
{{ printf "%s:%s" .image.repository $tag }}
{{- end -}}
{{- end }}

{{/* imagePullSecrets of a Pod spec, or nothing. */}}
{{- define "ramify.imagePullSecrets" -}}
{{- with .Values.image.pullSecrets -}}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Pod-level security context of the restricted Pod Security profile. The uid is the image's
own user: 65532 (distroless "nonroot") for the static binaries, 999 (postgres) for the
storage node, which must own the files the computes run on.
*/}}
{{- define "ramify.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: {{ .uid }}
runAsGroup: {{ .uid }}
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container-level security context of the restricted profile, read-only root included. */}}
{{- define "ramify.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop: ["ALL"]
{{- end }}

{{/* Fully qualified in-cluster host of a Service of this release. */}}
{{- define "ramify.serviceHost" -}}
{{ printf "%s.%s.svc.%s" .name .root.Release.Namespace (trimSuffix "." .root.Values.clusterDomain) }}
{{- end }}
