{{/* The name of every object: the release name, or release-chart when they differ. */}}
{{- define "ncps.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "ncps.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "ncps.labels" -}}
{{ include "ncps.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Whether an option is given, as a value or from a Secret. */}}
{{- define "ncps.has" -}}
{{- if or (hasKey .root.Values.env .name) (hasKey .root.Values.secretEnv .name) -}}true{{- end -}}
{{- end -}}

{{/* What mode ha cannot run without, checked at render time. */}}
{{- define "ncps.validate" -}}
{{- if not (has .Values.mode (list "single" "ha")) -}}
{{- fail (printf "mode must be single or ha, not %q" .Values.mode) -}}
{{- end -}}
{{- if eq .Values.mode "ha" -}}
{{- range $name := list "CACHE_DATABASE_URL" "CACHE_STORAGE_S3_BUCKET" "CACHE_REDIS_ADDRS" -}}
{{- if not (include "ncps.has" (dict "root" $ "name" $name)) -}}
{{- fail (printf "mode ha needs %s in env or secretEnv: the replicas share the database, the bucket and the locks" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
