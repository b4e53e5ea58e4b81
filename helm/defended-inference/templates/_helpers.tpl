{{/* Chart name, overridable, cut to the 63 characters a DNS label allows. */}}
{{- define "defended-inference.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: the release name alone when it already contains the chart name. */}}
{{- define "defended-inference.fullname" -}}
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

{{- define "defended-inference.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "defended-inference.selectorLabels" -}}
app.kubernetes.io/name: {{ include "defended-inference.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "defended-inference.labels" -}}
helm.sh/chart: {{ include "defended-inference.chart" . }}
{{ include "defended-inference.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference
{{- end }}

{{- define "defended-inference.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "defended-inference.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference: a digest pins it exactly; otherwise the tag, by default `<appVersion>-cpu|gpu`. */}}
{{- define "defended-inference.image" -}}
{{- $flavour := ternary "gpu" "cpu" .Values.gpu.enabled }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default (printf "%s-%s" .Chart.AppVersion $flavour) .Values.image.tag) }}
{{- end }}
{{- end }}

{{/* Where the service reads bundles: the image's own repository, or the mounted volume. */}}
{{- define "defended-inference.modelRepositoryPath" -}}
{{- if eq .Values.modelRepository.source "image" }}
{{- .Values.modelRepository.imagePath }}
{{- else }}
{{- .Values.modelRepository.mountPath }}
{{- end }}
{{- end }}

{{/* PromQL label matchers that select this release's scrape targets in the alert rules. */}}
{{- define "defended-inference.ruleSelector" -}}
{{- default (printf "job=%q, namespace=%q" (include "defended-inference.fullname" .) .Release.Namespace) .Values.metrics.prometheusRule.selector }}
{{- end }}
