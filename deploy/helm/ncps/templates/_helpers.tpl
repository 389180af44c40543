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

{{- define "ncps.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "ncps.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "ncps.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{/* Variables that hold secrets: only ever from a Secret. */}}
{{- define "ncps.secretVariables" -}}
{{- list "CACHE_STORAGE_S3_SECRET_ACCESS_KEY" "CACHE_REDIS_PASSWORD" "CACHE_GET_TOKEN" "CACHE_PUT_TOKEN" | toJson -}}
{{- end -}}

{{/* The variables given from Secrets: secretEnv plus the existingSecret
     shorthands, as variable -> {name, key, optional}. */}}
{{- define "ncps.secretRefs" -}}
{{- $refs := deepCopy .Values.secretEnv -}}
{{- with .Values.database.existingSecret -}}
{{- $_ := set $refs "CACHE_DATABASE_URL" (dict "name" . "key" $.Values.database.key) -}}
{{- end -}}
{{- with .Values.s3.existingSecret -}}
{{- $_ := set $refs "CACHE_STORAGE_S3_ACCESS_KEY_ID" (dict "name" . "key" $.Values.s3.accessKeyIdKey) -}}
{{- $_ := set $refs "CACHE_STORAGE_S3_SECRET_ACCESS_KEY" (dict "name" . "key" $.Values.s3.secretAccessKeyKey) -}}
{{- end -}}
{{- with .Values.redis.existingSecret -}}
{{- $_ := set $refs "CACHE_REDIS_PASSWORD" (dict "name" . "key" $.Values.redis.passwordKey) -}}
{{- end -}}
{{- with .Values.auth.existingSecret -}}
{{- $_ := set $refs "CACHE_GET_TOKEN" (dict "name" . "key" $.Values.auth.getTokenKey "optional" true) -}}
{{- $_ := set $refs "CACHE_PUT_TOKEN" (dict "name" . "key" $.Values.auth.putTokenKey "optional" true) -}}
{{- end -}}
{{- toJson $refs -}}
{{- end -}}

{{/* Whether an option is given, as a value or from a Secret. */}}
{{- define "ncps.has" -}}
{{- $refs := include "ncps.secretRefs" .root | fromJson -}}
{{- if or (hasKey .root.Values.env .name) (hasKey $refs .name) -}}true{{- end -}}
{{- end -}}

{{/* Where the migration runs: initContainer, job or none. */}}
{{- define "ncps.migrationMode" -}}
{{- $m := .Values.migration.mode -}}
{{- if eq $m "auto" -}}
{{- ternary "job" "initContainer" (eq .Values.mode "ha") -}}
{{- else -}}
{{- $m -}}
{{- end -}}
{{- end -}}

{{/* What the chart cannot render safely, checked at render time. */}}
{{- define "ncps.validate" -}}
{{- if not (has .Values.mode (list "single" "ha")) -}}
{{- fail (printf "mode must be single or ha, not %q" .Values.mode) -}}
{{- end -}}
{{- if not (has .Values.migration.mode (list "auto" "initContainer" "job" "none")) -}}
{{- fail (printf "migration.mode must be auto, initContainer, job or none, not %q" .Values.migration.mode) -}}
{{- end -}}
{{- if and (eq .Values.mode "single") (eq (include "ncps.migrationMode" .) "job") -}}
{{- fail "migration.mode job needs mode ha: in single mode the database is on the volume, which a pre-install hook runs before" -}}
{{- end -}}
{{- range $name := include "ncps.secretVariables" . | fromJsonArray -}}
{{- if hasKey $.Values.env $name -}}
{{- fail (printf "env.%s is a secret: give it from a Secret (secretEnv or an existingSecret), so it is never in the rendered manifests" $name) -}}
{{- end -}}
{{- end -}}
{{- with .Values.env.CACHE_DATABASE_URL -}}
{{- if regexMatch "^[a-z]+://[^/@]*:[^/@]*@" (toString .) -}}
{{- fail "env.CACHE_DATABASE_URL has a password: give it from a Secret (database.existingSecret)" -}}
{{- end -}}
{{- end -}}
{{- if hasKey .Values.env "CACHE_SECRET_KEY_PATH" | and .Values.signingKey.existingSecret -}}
{{- fail "set either env.CACHE_SECRET_KEY_PATH or signingKey.existingSecret" -}}
{{- end -}}
{{- if eq .Values.mode "ha" -}}
{{- range $name := list "CACHE_DATABASE_URL" "CACHE_STORAGE_S3_BUCKET" "CACHE_REDIS_ADDRS" -}}
{{- if not (include "ncps.has" (dict "root" $ "name" $name)) -}}
{{- fail (printf "mode ha needs %s in env, secretEnv or an existingSecret: the replicas share the database, the bucket and the locks" $name) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The environment every ncps container shares: the server, the
     migration and fsck. Secrets only by secretKeyRef. */}}
{{- define "ncps.env" -}}
{{- $ha := eq .Values.mode "ha" -}}
{{- if not $ha }}
- name: CACHE_STORAGE_LOCAL
  value: /var/lib/ncps
- name: CACHE_TEMP_PATH
  value: /var/lib/ncps/tmp
{{- if not (include "ncps.has" (dict "root" . "name" "CACHE_DATABASE_URL")) }}
# The server's default for this storage, spelled out for `ncps-cli migrate`.
- name: CACHE_DATABASE_URL
  value: sqlite:/var/lib/ncps/db/db.sqlite
{{- end }}
{{- end }}
- name: CACHE_HOSTNAME
  value: {{ .Values.hostname | quote }}
{{- if .Values.signingKey.existingSecret }}
- name: CACHE_SECRET_KEY_PATH
  value: /etc/ncps/signing-key/{{ .Values.signingKey.key }}
{{- end }}
{{- range $name, $value := .Values.env }}
- name: {{ $name }}
  value: {{ $value | toString | quote }}
{{- end }}
{{- range $name, $ref := include "ncps.secretRefs" . | fromJson }}
- name: {{ $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $ref.name }}
      key: {{ $ref.key }}
      {{- if $ref.optional }}
      optional: true
      {{- end }}
{{- end }}
{{- end -}}

{{/* Volume mounts every ncps container shares. */}}
{{- define "ncps.volumeMounts" -}}
{{- if eq .Values.mode "single" }}
- name: data
  mountPath: /var/lib/ncps
{{- end }}
- name: tmp
  mountPath: /tmp
{{- if .Values.signingKey.existingSecret }}
- name: signing-key
  mountPath: /etc/ncps/signing-key
  readOnly: true
{{- end }}
{{- end -}}

{{/* The volumes behind them. */}}
{{- define "ncps.volumes" -}}
{{- if eq .Values.mode "single" }}
- name: data
  persistentVolumeClaim:
    claimName: {{ .Values.persistence.existingClaim | default (include "ncps.fullname" .) }}
{{- end }}
- name: tmp
  emptyDir: {}
{{- with .Values.signingKey.existingSecret }}
- name: signing-key
  secret:
    secretName: {{ . }}
    defaultMode: 0440
{{- end }}
{{- end -}}
