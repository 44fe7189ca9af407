{{/*
What every workload's Pod template takes from its component's values (operator, storage,
proxy): extra labels and annotations, priority class and topology spread. Call each with
(dict "root" $ "component" "proxy" "values" .Values.proxy).
*/}}

{{/*
The component's extra Pod labels, after the chart's own. A key the chart sets itself is
refused: a Deployment whose Pods lose their selector labels never becomes ready, and the
operator finds proxy Pods by app.kubernetes.io/component.
*/}}
{{- define "ramify.podExtraLabels" -}}
{{- $own := include "ramify.componentLabels" (dict "root" .root "component" .component) | fromYaml -}}
{{- range $key, $value := .values.podLabels }}
{{- if hasKey $own $key }}
{{- fail (printf "%s.podLabels.%s: the chart sets this label itself (%s); extra Pod labels may use any other key" $.component $key (keys $own | sortAlpha | join ", ")) }}
{{- end }}
{{- end }}
{{- with .values.podLabels }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{/* The component's Pod annotations, or nothing. */}}
{{- define "ramify.podAnnotations" -}}
{{- with .values.podAnnotations -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
priorityClassName and topologySpreadConstraints of a Pod spec, or nothing. A constraint
without a labelSelector counts this component's Pods (its selector labels), which is what
spreading a component means; one with a selector is left as written.
*/}}
{{- define "ramify.podScheduling" -}}
{{- with .values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .values.topologySpreadConstraints }}
{{- $selector := include "ramify.selectorLabels" (dict "root" $.root "component" $.component) | fromYaml }}
{{- $constraints := list }}
{{- range . }}
{{- $c := deepCopy . }}
{{- if not (hasKey $c "labelSelector") }}
{{- $_ := set $c "labelSelector" (dict "matchLabels" $selector) }}
{{- end }}
{{- $constraints = append $constraints $c }}
{{- end }}
topologySpreadConstraints:
  {{- toYaml $constraints | nindent 2 }}
{{- end }}
{{- end }}

{{/*
A policy/v1 PodDisruptionBudget of one component's Pods, when its podDisruptionBudget is
enabled. minAvailable, when set, replaces maxUnavailable (Kubernetes takes only one).
*/}}
{{- define "ramify.podDisruptionBudget" -}}
{{- $pdb := .values.podDisruptionBudget | default dict -}}
{{- if $pdb.enabled }}
{{- $min := $pdb.minAvailable }}
{{- $max := $pdb.maxUnavailable }}
{{- if and (kindIs "invalid" $min) (kindIs "invalid" $max) }}
{{- fail (printf "%s.podDisruptionBudget is enabled with neither maxUnavailable nor minAvailable: set one (a number or a percentage, e.g. maxUnavailable: 1), or enabled: false" .component) }}
{{- end }}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata:
  name: ramify-{{ .component }}
  namespace: {{ .root.Release.Namespace }}
  labels:
    {{- include "ramify.componentLabels" (dict "root" .root "component" .component) | nindent 4 }}
spec:
  {{- if not (kindIs "invalid" $min) }}
  minAvailable: {{ $min }}
  {{- else }}
  maxUnavailable: {{ $max }}
  {{- end }}
  # A Pod that is not ready serves nothing: evicting it costs no availability, and
  # keeping it would block node drains for as long as it crash-loops.
  unhealthyPodEvictionPolicy: AlwaysAllow
  selector:
    matchLabels:
      {{- include "ramify.selectorLabels" (dict "root" .root "component" .component) | nindent 6 }}
{{- end }}
{{- end }}
