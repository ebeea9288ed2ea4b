{{/* Names, labels and computed settings shared by the templates. */}}

{{- define "tradewind.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tradewind.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/part-of: tradewind
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "tradewind.selectorLabels" -}}
app.kubernetes.io/name: tradewind-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "tradewind.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tradewind.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "tradewind.image" -}}
{{- $repo := .image.repository -}}
{{- if .registry -}}{{- $repo = printf "%s/%s" (trimSuffix "/" .registry) $repo -}}{{- end -}}
{{- printf "%s:%s" $repo (default .appVersion .image.tag) -}}
{{- end -}}

{{- define "tradewind.operatorImage" -}}
{{- include "tradewind.image" (dict "registry" .Values.image.registry "image" .Values.image.operator "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- define "tradewind.trainerImage" -}}
{{- include "tradewind.image" (dict "registry" .Values.image.registry "image" .Values.image.trainer "appVersion" .Chart.AppVersion) -}}
{{- end -}}

{{- define "tradewind.minioName" -}}{{ include "tradewind.fullname" . }}-minio{{- end -}}
{{- define "tradewind.minioSecret" -}}{{ include "tradewind.fullname" . }}-minio-credentials{{- end -}}
{{- define "tradewind.mlflowName" -}}{{ include "tradewind.fullname" . }}-mlflow{{- end -}}

{{/* The object store endpoint and credentials: bundled MinIO, else the values. */}}
{{- define "tradewind.s3Endpoint" -}}
{{- if .Values.minio.enabled -}}
{{- printf "http://%s.%s.svc:9000" (include "tradewind.minioName" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.objectStore.endpoint -}}
{{- end -}}
{{- end -}}

{{- define "tradewind.s3CredentialsSecret" -}}
{{- if .Values.minio.enabled -}}
{{- include "tradewind.minioSecret" . -}}
{{- else -}}
{{- .Values.objectStore.credentialsSecret -}}
{{- end -}}
{{- end -}}

{{- define "tradewind.mlflowUri" -}}
{{- if .Values.mlflowServer.enabled -}}
{{- printf "http://%s.%s.svc:5000" (include "tradewind.mlflowName" .) .Release.Namespace -}}
{{- else -}}
{{- .Values.mlflow.trackingUri -}}
{{- end -}}
{{- end -}}

{{- define "tradewind.optunaStorage" -}}
{{- default "sqlite:////var/lib/tradewind/optuna.db" .Values.optuna.storage -}}
{{- end -}}

{{- define "tradewind.optunaVolume" -}}
{{- and (not .Values.optuna.storage) .Values.optuna.persistence.enabled -}}
{{- end -}}

{{/* The Optuna study is a SQLite file in the operator pod (on the claim, or an emptyDir). */}}
{{- define "tradewind.optunaSqlite" -}}
{{- not .Values.optuna.storage -}}
{{- end -}}

{{/*
Operator replicas: operator.replicas, else 2 with a database URL in optuna.storage (and
leader election), 1 with SQLite (a ReadWriteOnce claim, or an emptyDir, is one pod's: a
second replica on another node could not mount it, and a takeover would lose the study).
*/}}
{{- define "tradewind.replicas" -}}
{{- $sqlite := eq (include "tradewind.optunaSqlite" .) "true" -}}
{{- $elect := .Values.operator.leaderElection.enabled -}}
{{- $replicas := .Values.operator.replicas | default (ternary 2 1 (and $elect (not $sqlite))) | int -}}
{{- if and $sqlite (gt $replicas 1) -}}
{{- fail "operator.replicas > 1 needs optuna.storage, a database URL every replica reaches (e.g. postgresql://...): the SQLite study is on a ReadWriteOnce claim (or an emptyDir) that only one pod can use" -}}
{{- end -}}
{{- if and (not $elect) (gt $replicas 1) -}}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled: two operators without it would both work" -}}
{{- end -}}
{{- $replicas -}}
{{- end -}}

{{/* The names of .Values.imagePullSecrets as a JSON list (TRADEWIND_IMAGE_PULL_SECRETS). */}}
{{- define "tradewind.pullSecretNames" -}}
{{- $names := list -}}
{{- range .Values.imagePullSecrets }}{{ $names = append $names .name }}{{ end -}}
{{- $names | toJson -}}
{{- end -}}
