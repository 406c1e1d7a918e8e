{{- define "tcpsleuth.name" -}}
{{- .Release.Name | trunc 53 | trimSuffix "-" -}}
{{- end -}}

{{- define "tcpsleuth.labels" -}}
app.kubernetes.io/name: tcpsleuth
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "tcpsleuth.selector" -}}
app.kubernetes.io/name: tcpsleuth
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
