{{- define "preview.namespace" -}}
{{- if not (toString .Values.pullRequest) -}}
{{- fail "pullRequest is required: the number of the pull request this environment previews" -}}
{{- end -}}
pr-{{ .Values.pullRequest }}
{{- end }}
