{{/* Names. A StatefulSet's name stays within 52 characters: its pods carry a
controller-revision-hash label of the name plus 11 characters, at most 63. */}}
{{- define "herd.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "herd.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The headless Service: the StatefulSet's serviceName and the gossip seed. */}}
{{- define "herd.headlessName" -}}
{{- printf "%s-gossip" (include "herd.fullname" .) }}
{{- end }}

{{/* The gossip seed: the headless Service's DNS name, which resolves to every pod's address
(ready or not), and herd joins them all. */}}
{{- define "herd.seed" -}}
{{- printf "%s.%s.svc.%s:%d" (include "herd.headlessName" .) .Release.Namespace .Values.clusterDomain (int .Values.ports.gossip) }}
{{- end }}

{{- define "herd.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "herd.selectorLabels" -}}
app.kubernetes.io/name: {{ include "herd.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "herd.labels" -}}
helm.sh/chart: {{ include "herd.chart" . }}
{{ include "herd.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "herd.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion | toString) }}
{{- end }}

{{/* The Secret holding the master and cluster keys: the chart's, or existingSecret. */}}
{{- define "herd.secretName" -}}
{{- .Values.existingSecret | default (include "herd.fullname" .) }}
{{- end }}

{{/* herd's data dir: the Dockerfile's /var/lib/herd, owned by the image's nonroot user. */}}
{{- define "herd.dataDir" -}}/var/lib/herd{{- end }}

{{- define "herd.configPath" -}}/etc/herd/config.yaml{{- end }}

{{/* herd.redisPasswordRef: the secretKeyRef of the Redis password as "name/key", or "" for none. */}}
{{- define "herd.redisPasswordRef" -}}
{{- if .Values.redis.host }}
{{- if .Values.redis.existingSecret }}
{{- printf "%s/%s" .Values.redis.existingSecret .Values.redis.existingSecretKey }}
{{- else if .Values.redis.password }}
{{- printf "%s/%s" (include "herd.fullname" .) .Values.secretKeys.redisPassword }}
{{- end }}
{{- end }}
{{- end }}

{{/* herd.validate fails rendering on values that cannot make a working cluster. Every
template includes it, so `helm template -s` of any one file fails alike. */}}
{{- define "herd.validate" -}}
{{- $n := .Values.replicaCount }}
{{- if not (or (kindIs "int" $n) (kindIs "int64" $n) (kindIs "float64" $n)) }}
{{- fail (printf "replicaCount must be a number (got %v)" $n) }}
{{- end }}
{{- if or (lt (float64 $n) 1.0) (ne (float64 (int $n)) (float64 $n)) }}
{{- fail (printf "replicaCount must be a whole number of at least 1, the raft voters that bootstrap the cluster (got %v)" $n) }}
{{- end }}
{{- if not .Values.existingSecret }}
{{- if not .Values.masterKey }}
{{- fail "masterKey is required (the key clients and the admin API use), or existingSecret naming a Secret that holds it" }}
{{- end }}
{{- if not .Values.clusterKey }}
{{- fail "clusterKey is required (make one with `herd keygen`: the pods talk beyond loopback, so herd refuses to start without it), or existingSecret naming a Secret that holds it" }}
{{- end }}
{{- if not (regexMatch "^([A-Za-z0-9+/]{22}==|[A-Za-z0-9+/]{32}|[A-Za-z0-9+/]{43}=)$" (trim .Values.clusterKey)) }}
{{- fail "clusterKey must be base64 of 16, 24 or 32 bytes, as `herd keygen` prints" }}
{{- end }}
{{- else if and .Values.redis.host .Values.redis.password (not .Values.redis.existingSecret) }}
{{- fail "redis.password with existingSecret: the chart makes no Secret to keep it in; put the password in a Secret and set redis.existingSecret (and redis.existingSecretKey)" }}
{{- end }}
{{- if and (or .Values.redis.password .Values.redis.existingSecret) (not .Values.redis.host) }}
{{- fail "redis.password or redis.existingSecret is set but redis.host is not: Redis mode needs redis.host" }}
{{- end }}
{{- $p := .Values.ports }}
{{- if or (eq (int $p.gossip) (int $p.raft)) (eq (int $p.gossip) (int $p.http)) (eq (int $p.raft) (int $p.http)) }}
{{- fail (printf "ports.http, ports.gossip and ports.raft must differ (got %v, %v, %v)" $p.http $p.gossip $p.raft) }}
{{- end }}
{{- $_ := include "herd.config" . }}
{{- end }}

{{/* herd.config renders herd's config.yaml: the values' config block (a map, or a string of
YAML as --set-file gives) plus what the chart owns. It fails on a block that sets what the
chart owns, or that would put a secret into the ConfigMap. */}}
{{- define "herd.config" -}}
{{- $cfg := .Values.config | default dict }}
{{- if kindIs "string" $cfg }}
{{- $cfg = fromYaml $cfg }}
{{- if hasKey $cfg "Error" }}
{{- fail (printf "config is not YAML: %v" (get $cfg "Error")) }}
{{- end }}
{{- end }}
{{- if not (kindIs "map" $cfg) }}
{{- fail "config must be a LiteLLM config.yaml: a mapping with model_list, router_settings, ..." }}
{{- end }}
{{- $cfg = deepCopy $cfg }}
{{- range $block := list "general_settings" "cluster_settings" "router_settings" }}
{{- $b := get $cfg $block }}
{{- if not $b }}
{{- $_ := set $cfg $block dict }}
{{- else if not (kindIs "map" $b) }}
{{- fail (printf "config.%s must be a mapping" $block) }}
{{- end }}
{{- end }}
{{- $gs := $cfg.general_settings }}
{{- $cs := $cfg.cluster_settings }}
{{- $rs := $cfg.router_settings }}
{{- /* The keys: a config may name the variables the chart sets (as LiteLLM's and the
compose example's do), nothing else. */}}
{{- if and (hasKey $gs "master_key") (ne (toString (get $gs "master_key")) "os.environ/LITELLM_MASTER_KEY") }}
{{- fail "config.general_settings.master_key is set by the chart from masterKey or existingSecret (as os.environ/LITELLM_MASTER_KEY); remove it from config" }}
{{- end }}
{{- if and (hasKey $cs "cluster_key") (ne (toString (get $cs "cluster_key")) "os.environ/HERD_CLUSTER_KEY") }}
{{- fail "config.cluster_settings.cluster_key is set by the chart from clusterKey or existingSecret (as os.environ/HERD_CLUSTER_KEY); remove it from config" }}
{{- end }}
{{- $owned := dict
  "gossip_key" "clusterKey or existingSecret (as cluster_key: os.environ/HERD_CLUSTER_KEY)"
  "bootstrap_expect" "replicaCount"
  "join" "the headless Service's DNS name"
  "gossip_addr" "ports.gossip"
  "raft_addr" "ports.raft"
  "advertise_addr" "the pod's IP"
  "node_name" "the pod's name"
  "data_dir" "the pod's volume" }}
{{- range $key := keys $owned | sortAlpha }}
{{- if hasKey $cs $key }}
{{- fail (printf "config.cluster_settings.%s is set by the chart from %s; remove it from config" $key (get $owned $key)) }}
{{- end }}
{{- end }}
{{- range $i, $k := get $cs "accept_keys" | default list }}
{{- if not (hasPrefix "os.environ/" (toString $k)) }}
{{- fail (printf "config.cluster_settings.accept_keys[%d] must be an os.environ/NAME reference (with NAME from extraEnv), not the key itself: the ConfigMap is no place for keys" $i) }}
{{- end }}
{{- end }}
{{- if and (hasKey $rs "redis_password") (not (hasPrefix "os.environ/" (toString (get $rs "redis_password")))) }}
{{- fail "config.router_settings.redis_password must not be written in the config: use redis.password or redis.existingSecret (or an os.environ/NAME reference)" }}
{{- end }}
{{- if .Values.redis.host }}
{{- range $key := list "redis_host" "redis_port" "redis_password" "redis_url" }}
{{- if hasKey $rs $key }}
{{- fail (printf "config.router_settings.%s conflicts with redis.host: set Redis either in the redis values or in config, not both" $key) }}
{{- end }}
{{- end }}
{{- $_ := set $rs "redis_host" (toString .Values.redis.host) }}
{{- $_ := set $rs "redis_port" (toString .Values.redis.port) }}
{{- if include "herd.redisPasswordRef" . }}
{{- $_ := set $rs "redis_password" "os.environ/REDIS_PASSWORD" }}
{{- end }}
{{- end }}
{{- if not $rs }}
{{- $_ := unset $cfg "router_settings" }}
{{- end }}
{{- $_ := set $gs "master_key" "os.environ/LITELLM_MASTER_KEY" }}
{{- $_ := set $cs "cluster_key" "os.environ/HERD_CLUSTER_KEY" }}
{{- $_ := set $cs "bootstrap_expect" (int .Values.replicaCount) }}
{{- $_ := set $cs "join" (list (include "herd.seed" .)) }}
{{- $_ := set $cs "gossip_addr" (printf "0.0.0.0:%d" (int .Values.ports.gossip)) }}
{{- $_ := set $cs "raft_addr" (printf "0.0.0.0:%d" (int .Values.ports.raft)) }}
{{- $_ := set $cs "data_dir" (include "herd.dataDir" .) }}
{{- toYaml $cfg }}
{{- end }}
