{{/* The chart name, or nameOverride. */}}
{{- define "opsync.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The base name of the objects: fullnameOverride, or the release name when it already contains
the chart name, or <release>-<chart>. Cluster-scoped objects (ClusterRole, ClusterRoleBinding)
carry it too, so two releases never share one.
*/}}
{{- define "opsync.fullname" -}}
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

{{- define "opsync.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "opsync.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "opsync.selectorLabels" -}}
app.kubernetes.io/name: {{ include "opsync.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "opsync.operatorSelectorLabels" -}}
{{ include "opsync.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "opsync.connectSelectorLabels" -}}
{{ include "opsync.selectorLabels" . }}
app.kubernetes.io/component: connect
{{- end }}

{{- define "opsync.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "opsync.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* OP_CONNECT_HOST: connect.host as given when it is a URL, else http://<host>:<api port>. */}}
{{- define "opsync.connectUrl" -}}
{{- $host := .Values.connect.host }}
{{- if contains "://" $host }}
{{- $host }}
{{- else }}
{{- printf "http://%s:%v" $host .Values.connect.api.httpPort }}
{{- end }}
{{- end }}

{{/* The image, tag defaulting to the chart's appVersion. */}}
{{- define "opsync.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/*
Checks the schema cannot express.
*/}}
{{- define "opsync.validate" -}}
{{- if and .Values.connect.credentials .Values.connect.credentials_base64 }}
{{- fail "connect.credentials and connect.credentials_base64: set one of them, not both" }}
{{- end }}
{{- end }}
