{{/* The chart's name, or nameOverride. */}}
{{- define "capreg.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The release-qualified name of every object: <release>-capreg, or fullnameOverride. */}}
{{- define "capreg.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "capreg.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "capreg.selectorLabels" -}}
app.kubernetes.io/name: {{ include "capreg.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "capreg.labels" -}}
helm.sh/chart: {{ include "capreg.chart" . }}
{{ include "capreg.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: capreg
{{- end -}}

{{- define "capreg.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "capreg.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* repository:tag (the appVersion by default), or repository@digest. */}}
{{- define "capreg.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "capreg.cnpgClusterName" -}}
{{- default (printf "%s-pg" (include "capreg.fullname" . | trunc 50 | trimSuffix "-")) .Values.postgres.cnpg.clusterName -}}
{{- end -}}

{{/* True ("true") when the chart itself stores database.url in a Secret. */}}
{{- define "capreg.ownsDatabaseSecret" -}}
{{- if and .Values.database.url (not .Values.database.existingSecret) (not .Values.postgres.cnpg.enabled) -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding the database URL: existingSecret, else CloudNativePG's "<cluster>-app", else ours. */}}
{{- define "capreg.databaseSecretName" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecret -}}
{{- else if .Values.postgres.cnpg.enabled -}}
{{- printf "%s-app" (include "capreg.cnpgClusterName" .) -}}
{{- else -}}
{{- printf "%s-db" (include "capreg.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "capreg.databaseSecretKey" -}}
{{- if .Values.database.existingSecret -}}
{{- .Values.database.existingSecretKey -}}
{{- else if .Values.postgres.cnpg.enabled -}}
uri
{{- else -}}
database-url
{{- end -}}
{{- end -}}

{{/* The replicas that run at the least: the autoscaler's minimum, or replicaCount. */}}
{{- define "capreg.minReplicas" -}}
{{- if .Values.hpa.enabled -}}{{ .Values.hpa.minReplicas }}{{- else -}}{{ .Values.replicaCount }}{{- end -}}
{{- end -}}

{{/* Refuse values that cannot work, with a message that says what to set. */}}
{{- define "capreg.validate" -}}
{{- if not (or .Values.database.url .Values.database.existingSecret .Values.postgres.cnpg.enabled) -}}
{{- fail "capreg needs a PostgreSQL: set database.url, database.existingSecret or postgres.cnpg.enabled=true" -}}
{{- end -}}
{{- if and .Values.database.url .Values.postgres.cnpg.enabled -}}
{{- fail "database.url and postgres.cnpg.enabled exclude each other: with CloudNativePG the URL comes from the cluster's Secret" -}}
{{- end -}}
{{- if hasKey .Values.settings "database_url" -}}
{{- fail "settings.database_url is not allowed (a ConfigMap is no place for a password): use database.url or database.existingSecret" -}}
{{- end -}}
{{- range $key := list "host" "port" "data_dir" "auth_enabled" "otel_exporter" "otel_service_name" "metrics_port" "log_format" -}}
{{- if hasKey $.Values.settings $key -}}
{{- fail (printf "settings.%s is set by the chart itself; use the chart's own value for it (see values.yaml)" $key) -}}
{{- end -}}
{{- end -}}
{{- if and .Values.hpa.enabled (gt (int .Values.hpa.minReplicas) (int .Values.hpa.maxReplicas)) -}}
{{- fail "hpa.minReplicas is greater than hpa.maxReplicas" -}}
{{- end -}}
{{- if and .Values.metrics.enabled (eq (int .Values.metrics.port) (int .Values.grpcPort)) -}}
{{- fail "metrics.port and grpcPort must differ" -}}
{{- end -}}
{{- end -}}

{{/* The pod-level settings the server and the migration Job share. */}}
{{- define "capreg.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}

{{/* CAPREG_DATABASE_URL from its Secret; $secret and $key name it. */}}
{{- define "capreg.databaseEnv" -}}
- name: CAPREG_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .secret }}
      key: {{ .key }}
{{- end -}}

{{/* Waits until the database accepts connections (WAIT_TIMEOUT_S seconds at most); psycopg is in the image. */}}
{{- define "capreg.waitForDatabaseScript" -}}
import os, sys, time
import psycopg
url = os.environ["CAPREG_DATABASE_URL"].replace("postgresql+psycopg://", "postgresql://", 1)
deadline = time.monotonic() + float(os.environ.get("WAIT_TIMEOUT_S", "600"))
while True:
    try:
        psycopg.connect(url, connect_timeout=5).close()
        print("the database accepts connections", flush=True)
        sys.exit(0)
    except psycopg.Error as error:
        if time.monotonic() >= deadline:
            sys.exit(f"gave up waiting for the database: {error}")
        print(f"waiting for the database: {type(error).__name__}", flush=True)
        time.sleep(5)
{{- end -}}

{{/* Waits until the schema is at the head revision this image needs (WAIT_TIMEOUT_S seconds at most). */}}
{{- define "capreg.waitForSchemaScript" -}}
import os, sys, time
from registry.store import migrate
from registry.store.engine import make_engine
engine = make_engine(os.environ["CAPREG_DATABASE_URL"], pool_size=1)
deadline = time.monotonic() + float(os.environ.get("WAIT_TIMEOUT_S", "900"))
while True:
    try:
        current, head = migrate.current_revision(engine), migrate.head_revision(engine)
        if current == head:
            print(f"the schema is at {head}", flush=True)
            sys.exit(0)
        status = f"schema at {current or 'none'}, this image needs {head}: waiting for the migration"
    except Exception as error:
        status = f"waiting for the database: {type(error).__name__}"
    if time.monotonic() >= deadline:
        sys.exit(f"gave up: {status}")
    print(status, flush=True)
    time.sleep(5)
{{- end -}}
