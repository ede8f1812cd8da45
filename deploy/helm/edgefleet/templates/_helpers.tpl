{{/* The chart's name, and the release-qualified name every object starts with. */}}
{{- define "edgefleet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Truncated to 56 so that "<fullname>-events" and "-migrate" still fit in 63. */}}
{{- define "edgefleet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 56 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 56 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "edgefleet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edgefleet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "edgefleet.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "edgefleet.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "edgefleet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "edgefleet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image; its tag defaults to the chart's appVersion (the project's version). */}}
{{- define "edgefleet.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The Secret the pods read: the operator's (secrets.existingSecret) or the chart's. */}}
{{- define "edgefleet.secretName" -}}
{{- .Values.secrets.existingSecret | default (include "edgefleet.fullname" .) }}
{{- end }}

{{/*
The chart-made Secret's content, as YAML (key: plain value). Every secret must be given:
none has a default, and a generated server key would change at each `helm template` (GitOps)
and make every stored device PSK unreadable.
*/}}
{{- define "edgefleet.secretData" -}}
{{- $s := .Values.secrets }}
{{- if ne (empty $s.s3AccessKeyId) (empty $s.s3SecretAccessKey) }}
{{- fail "secrets.s3AccessKeyId and secrets.s3SecretAccessKey go together: give both, or neither (boto3's credential chain, e.g. a role for the service account)" }}
{{- end }}
secret-key: {{ required "secrets.secretKey is required (encrypts device PSKs at rest; keep it: `openssl rand -base64 48`), or set secrets.existingSecret" $s.secretKey | quote }}
database-url: {{ required "secrets.databaseUrl is required (postgresql+asyncpg://user:password@host:5432/edgefleet), or set secrets.existingSecret" $s.databaseUrl | quote }}
mqtt-password: {{ required "secrets.mqttPassword is required (the broker password of mqtt.username), or set secrets.existingSecret" $s.mqttPassword | quote }}
{{- with $s.s3AccessKeyId }}
s3-access-key-id: {{ . | quote }}
s3-secret-access-key: {{ $s.s3SecretAccessKey | quote }}
{{- end }}
{{- end }}

{{/*
Environment from the Secret named by .name (keys as in edgefleet.secretData); .migrate: only
what `edgefleet migrate` needs (production settings refuse to load without the key).
*/}}
{{- define "edgefleet.secretEnv" -}}
- name: EDGEFLEET_SECRET_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: secret-key
- name: EDGEFLEET_DATABASE_URL
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: database-url
{{- if not .migrate }}
- name: EDGEFLEET_MQTT__SERVER_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: mqtt-password
# optional: without them boto3 looks further (a role for the service account, …)
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: s3-access-key-id
      optional: true
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .name }}
      key: s3-secret-access-key
      optional: true
{{- end }}
{{- end }}

{{/*
The settings that are not secret and the same in every pod, as YAML (NAME: "value"): the
ConfigMap's data, and the migration Job's env (a pre-install hook runs before the ConfigMap
exists). Role settings (ingest, shared group, client id) are in the Deployments.
*/}}
{{- define "edgefleet.config" -}}
{{- $c := .Values.config }}
{{- $env := dict
  "EDGEFLEET_ENVIRONMENT" "production"
  "EDGEFLEET_LOG_FORMAT" "json"
  "EDGEFLEET_LOG_LEVEL" $c.logLevel
  "EDGEFLEET_HTTP__HOST" "0.0.0.0"
  "EDGEFLEET_HTTP__PORT" "8080"
  "EDGEFLEET_HTTP__PUBLIC_URL" (required "config.publicUrl is required: the https:// URL browsers and gateways reach the server at" $c.publicUrl)
  "EDGEFLEET_HTTP__COOKIE_SECURE" "true"
  "EDGEFLEET_MQTT__EMBEDDED" "false"
  "EDGEFLEET_MQTT__SERVER_USERNAME" .Values.mqtt.username
  "EDGEFLEET_MQTT__GATEWAY_PORT" (toString .Values.mqtt.gatewayPort)
  "EDGEFLEET_STORAGE__URL" (required "storage.url is required: s3://bucket/prefix (pods share no disk)" .Values.storage.url)
  "EDGEFLEET_HTTP__TRUSTED_PROXIES" $c.trustedProxies
}}
{{- if .Values.broker.enabled }}
{{- if .Values.mqtt.host }}
{{- fail "mqtt.host names a broker outside the chart, while broker.enabled runs the chart's own: give one (broker.enabled=false for mqtt.host)" }}
{{- end }}
{{- $_ := set $env "EDGEFLEET_MQTT__NODES" (include "edgefleet.brokerNodes" .) }}
{{- else }}
{{- $_ := set $env "EDGEFLEET_MQTT__SERVER_HOST" (required "mqtt.host is required with broker.enabled=false: the broker's address inside the cluster" .Values.mqtt.host) }}
{{- $_ := set $env "EDGEFLEET_MQTT__SERVER_PORT" (toString .Values.mqtt.port) }}
{{- end }}
{{- with $c.adminEmail }}{{ $_ := set $env "EDGEFLEET_ADMIN_EMAIL" . }}{{ end }}
{{- with .Values.mqtt.gatewayHost }}{{ $_ := set $env "EDGEFLEET_MQTT__GATEWAY_HOST" . }}{{ end }}
{{- with .Values.storage.s3EndpointUrl }}{{ $_ := set $env "EDGEFLEET_STORAGE__S3_ENDPOINT_URL" . }}{{ end }}
{{- with .Values.storage.s3Region }}{{ $_ := set $env "EDGEFLEET_STORAGE__S3_REGION" . }}{{ end }}
{{- range $name, $value := $c.env }}
{{- if hasKey $env $name }}
{{- fail (printf "config.env.%s is set by the chart from its own value (values.yaml)" $name) }}
{{- end }}
{{- if regexMatch "(?i)(PASSWORD|SECRET|TOKEN|DATABASE_URL|ACCESS_KEY)" $name }}
{{- fail (printf "config.env.%s is a secret: config.env goes into a ConfigMap, readable in clear; give it in secrets.* or secrets.existingSecret" $name) }}
{{- end }}
{{- $_ := set $env $name (toString $value) }}
{{- end }}
{{- toYaml $env }}
{{- end }}

{{/* The /tmp every edgefleet container gets (the root filesystem is read-only). */}}
{{- define "edgefleet.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpSizeLimit }}
{{- end }}

{{/*
The broker tier's nodes as the servers name them (EDGEFLEET_MQTT__NODES): each pod of the
StatefulSet by its stable name under the headless Service, at its server listener:
broker-0=<fullname>-broker-0.<fullname>-broker-headless.<namespace>.svc:18830,…
*/}}
{{- define "edgefleet.brokerNodes" -}}
{{- $fullname := include "edgefleet.fullname" . }}
{{- $replicas := int .Values.broker.replicas }}
{{- if lt $replicas 1 }}
{{- fail "broker.replicas must be at least 1 while broker.enabled (gateways need a node to connect to); set broker.enabled=false and mqtt.host for a broker outside the chart" }}
{{- end }}
{{- $nodes := list }}
{{- range $i := until $replicas }}
{{- $nodes = append $nodes (printf "broker-%d=%s-broker-%d.%s-broker-headless.%s.svc:%d" $i $fullname $i $fullname $.Release.Namespace (int $.Values.broker.serverPort)) }}
{{- end }}
{{- join "," $nodes }}
{{- end }}

{{/*
The broker token (EDGEFLEET_BROKER_TOKEN on the servers, --token-file on the broker pods): the
one given (secrets.brokerToken), else the one the release's Secret already holds (kept across
upgrades), else a new random one. `helm template` cannot look the Secret up: give
secrets.brokerToken (or secrets.existingSecret) when rendering for GitOps.
*/}}
{{- define "edgefleet.brokerToken" -}}
{{- if .Values.secrets.brokerToken }}
{{- .Values.secrets.brokerToken }}
{{- else }}
{{- $existing := lookup "v1" "Secret" .Release.Namespace (include "edgefleet.fullname" .) }}
{{- $kept := "" }}
{{- if $existing }}{{ $kept = index ($existing.data | default dict) "broker-token" | default "" }}{{ end }}
{{- if $kept }}
{{- $kept | b64dec }}
{{- else }}
{{- randAlphaNum 48 }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Pod anti-affinity for one component's pods (.component) of the release (.root), by the
values podAntiAffinity (preferred, required, none) and affinity (replaces it when given).
*/}}
{{- define "edgefleet.affinity" -}}
{{- $v := .root.Values }}
{{- if $v.affinity -}}
affinity:
  {{- toYaml $v.affinity | nindent 2 }}
{{- else if ne $v.podAntiAffinity "none" -}}
# one component's pods on different nodes (and zones when they can), so that losing a node
# leaves the others serving
affinity:
  podAntiAffinity:
    {{- if eq $v.podAntiAffinity "required" }}
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- include "edgefleet.selectorLabels" .root | nindent 12 }}
            app.kubernetes.io/component: {{ .component }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- include "edgefleet.selectorLabels" .root | nindent 14 }}
              app.kubernetes.io/component: {{ .component }}
      - weight: 50
        podAffinityTerm:
          topologyKey: topology.kubernetes.io/zone
          labelSelector:
            matchLabels:
              {{- include "edgefleet.selectorLabels" .root | nindent 14 }}
              app.kubernetes.io/component: {{ .component }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
What rolls the pods when a secret the chart makes changes: its given values. Not a generated
broker token, which would differ at each `helm template` and is kept across upgrades anyway.
*/}}
{{- define "edgefleet.secretChecksum" -}}
{{- printf "%s\n%s" (include "edgefleet.secretData" .) .Values.secrets.brokerToken | sha256sum }}
{{- end }}
