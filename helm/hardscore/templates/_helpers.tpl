{{/* Names, labels and the derived settings the templates share. */}}

{{- define "hardscore.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, at most 54 characters so that "-headless" still fits in 63. */}}
{{- define "hardscore.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 54 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 54 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "hardscore.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "hardscore.selectorLabels" -}}
app.kubernetes.io/name: {{ include "hardscore.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "hardscore.labels" -}}
helm.sh/chart: {{ include "hardscore.chart" . }}
{{ include "hardscore.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "hardscore.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "hardscore.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image: the GPU tag when gpu.enabled. */}}
{{- define "hardscore.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.gpu.enabled }}
{{- $tag = .Values.image.gpuTag | default (printf "%s-gpu" $tag) }}
{{- end }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}

{{/* Whole CPU cores of a quantity ("2", "1500m", 2.5), at least 1; 0 when unset. */}}
{{- define "hardscore.cores" -}}
{{- $cpu := . | toString }}
{{- if or (eq $cpu "") (eq $cpu "<nil>") }}0
{{- else if hasSuffix "m" $cpu }}{{ max 1 (div (trimSuffix "m" $cpu | int) 1000) }}
{{- else }}{{ max 1 ($cpu | float64 | floor | int) }}
{{- end }}
{{- end }}

{{/* ONNX Runtime threads per instance: config.intra_op_threads, or the CPU limit (else request)
     divided by the instances; 0 (the server decides) when neither is set. */}}
{{- define "hardscore.intraOpThreads" -}}
{{- $threads := .Values.config.intra_op_threads | default 0 | int }}
{{- if eq $threads 0 }}
{{- $resources := .Values.resources | default dict }}
{{- $cpu := dig "limits" "cpu" "" $resources | default (dig "requests" "cpu" "" $resources) }}
{{- $cores := include "hardscore.cores" $cpu | int }}
{{- if gt $cores 0 }}
{{- $threads = max 1 (div $cores (.Values.config.instances | default 1 | int)) }}
{{- end }}
{{- end }}
{{- $threads }}
{{- end }}

{{/* Mount points of the secrets. */}}
{{- define "hardscore.tlsDir" -}}/etc/hardscore/tls{{- end }}
{{- define "hardscore.clientCADir" -}}/etc/hardscore/client-ca{{- end }}
{{- define "hardscore.probeCADir" -}}/etc/hardscore/probe-ca{{- end }}
{{- define "hardscore.authDir" -}}/etc/hardscore/auth{{- end }}
{{- define "hardscore.configDir" -}}/etc/hardscore/config{{- end }}
{{- define "hardscore.controlDir" -}}/etc/hardscore/control{{- end }}

{{/* The model directory the server loads; empty = the embedded default model. */}}
{{- define "hardscore.modelDir" -}}
{{- if eq .Values.model.source "image" }}
{{- .Values.model.dir }}
{{- else if .Values.model.subPath }}
{{- printf "%s/%s" (.Values.model.mountPath | trimSuffix "/") (.Values.model.subPath | trimPrefix "/") }}
{{- else }}
{{- .Values.model.mountPath }}
{{- end }}
{{- end }}

{{/* The server's settings: config values, overridden by those the chart owns. As YAML. */}}
{{- define "hardscore.settings" -}}
{{- $managed := dict
  "host" "0.0.0.0"
  "port" (.Values.ports.grpc | int)
  "http_port" (ternary (.Values.ports.http | default 0 | int) -1 (gt (.Values.ports.http | default 0 | int) 0))
  "metrics_host" "0.0.0.0"
  "metrics_port" (.Values.ports.metrics | int)
  "intra_op_threads" (include "hardscore.intraOpThreads" . | int)
}}
{{- $modelDir := include "hardscore.modelDir" . }}
{{- $repo := .Values.modelRepository }}
{{- include "hardscore.checkRepository" . }}
{{- if $repo.enabled }}
{{- $_ := set $managed "model_repository" $modelDir }}
{{- $_ := set $managed "model_control_mode" $repo.controlMode }}
{{- $_ := set $managed "version_policy" $repo.versionPolicy }}
{{- $_ := set $managed "max_loaded_models" ($repo.maxLoadedModels | int64) }}
{{- $_ := set $managed "model_memory_limit_bytes" ($repo.memoryLimitBytes | int64) }}
{{- if eq $repo.controlMode "poll" }}
{{- $_ := set $managed "repository_poll_s" ($repo.pollSeconds | float64) }}
{{- end }}
{{- if eq $repo.controlMode "explicit" }}
{{- with $repo.loadModels }}
{{- /* A comma list: the server reads a list setting from the file as one string. */}}
{{- $_ := set $managed "load_model" (join "," .) }}
{{- end }}
{{- $_ := set $managed "repository_control_tokens_file" (printf "%s/%s" (include "hardscore.controlDir" .) $repo.controlTokens.key) }}
{{- end }}
{{- else if $modelDir }}
{{- $_ := set $managed "model_dir" $modelDir }}
{{- end }}
{{- if not (hasKey .Values.config "execution_provider") }}
{{- $_ := set $managed "execution_provider" (ternary "cuda" "cpu" .Values.gpu.enabled) }}
{{- end }}
{{- if include "hardscore.healthPortOn" . }}
{{- $_ := set $managed "health_port" (.Values.ports.health | int) }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- $_ := set $managed "tls_cert_file" (printf "%s/%s" (include "hardscore.tlsDir" .) .Values.tls.certKey) }}
{{- $_ := set $managed "tls_key_file" (printf "%s/%s" (include "hardscore.tlsDir" .) .Values.tls.keyKey) }}
{{- if .Values.tls.clientCA.enabled }}
{{- $_ := set $managed "tls_client_ca_file" (printf "%s/%s" (include "hardscore.clientCADir" .) .Values.tls.clientCA.key) }}
{{- end }}
{{- end }}
{{- if .Values.metrics.tls.enabled }}
{{- if not .Values.tls.enabled }}
{{- fail "metrics.tls.enabled needs tls.enabled: the metrics port uses the gRPC port's certificate (tls.secretName)" }}
{{- end }}
{{- $_ := set $managed "metrics_tls_cert_file" (printf "%s/%s" (include "hardscore.tlsDir" .) .Values.tls.certKey) }}
{{- $_ := set $managed "metrics_tls_key_file" (printf "%s/%s" (include "hardscore.tlsDir" .) .Values.tls.keyKey) }}
{{- if .Values.metrics.tls.clientCA }}
{{- if not .Values.tls.clientCA.enabled }}
{{- fail "metrics.tls.clientCA needs tls.clientCA.enabled: scrapers' certificates are checked against its CA" }}
{{- end }}
{{- $_ := set $managed "metrics_tls_client_ca_file" (printf "%s/%s" (include "hardscore.clientCADir" .) .Values.tls.clientCA.key) }}
{{- end }}
{{- end }}
{{- if .Values.auth.enabled }}
{{- $_ := set $managed "auth_tokens_file" (printf "%s/%s" (include "hardscore.authDir" .) .Values.auth.key) }}
{{- end }}
{{- toYaml (merge $managed (deepCopy .Values.config)) }}
{{- end }}

{{/* The model repository's values, refused here with the reason where the server would refuse
     to start (docs/security.md, "Model control"). */}}
{{- define "hardscore.checkRepository" -}}
{{- $repo := .Values.modelRepository }}
{{- if $repo.enabled }}
{{- if not (include "hardscore.modelDir" .) }}
{{- fail "modelRepository.enabled needs the repository's folder: model.dir (a folder baked into the image, with model.source image) or a volume (model.source pvc, hostPath or emptyDir)" }}
{{- end }}
{{- if eq $repo.controlMode "explicit" }}
{{- if not $repo.controlTokens.secretName }}
{{- fail "modelRepository.controlMode explicit needs modelRepository.controlTokens.secretName: the server listens beyond loopback in a pod and refuses explicit model control there without control tokens (a Secret whose key modelRepository.controlTokens.key holds them, one per line)" }}
{{- end }}
{{- if gt (.Values.config.workers | default 1 | int) 1 }}
{{- fail (printf "modelRepository.controlMode explicit needs config.workers 1 (it is %v): a load or unload would reach one worker only; use controlMode poll, or one worker" .Values.config.workers) }}
{{- end }}
{{- end }}
{{- else if ne $repo.controlMode "none" }}
{{- fail (printf "modelRepository.controlMode %s needs modelRepository.enabled" $repo.controlMode) }}
{{- end }}
{{- end }}

{{/* grace_period_s as whole seconds (the server's default when unset). */}}
{{- define "hardscore.graceSeconds" -}}
{{- if hasKey .Values.config "grace_period_s" }}
{{- .Values.config.grace_period_s | float64 | ceil | int }}
{{- else }}30
{{- end }}
{{- end }}

{{/* "true" when the control-token Secret is mounted: a repository in explicit mode. */}}
{{- define "hardscore.controlTokensOn" -}}
{{- if and .Values.modelRepository.enabled (eq .Values.modelRepository.controlMode "explicit") }}true{{ end }}
{{- end }}

{{/* "true" when the plaintext health port is open: TLS on and native gRPC probes. */}}
{{- define "hardscore.healthPortOn" -}}
{{- if and .Values.tls.enabled (eq .Values.probes.mode "grpc") }}true{{ end }}
{{- end }}

{{/* The name the in-pod clients (exec probes, the Label Studio sidecar) expect in the server
     certificate when they call 127.0.0.1: tls.probe.serverName, else the Service's DNS name. */}}
{{- define "hardscore.tlsServerName" -}}
{{- .Values.tls.probe.serverName | default (printf "%s.%s.svc" (include "hardscore.fullname" .) .Release.Namespace) }}
{{- end }}

{{/* The CA file the in-pod clients (exec probes, the Label Studio sidecar) verify the server
     with: tls.probe.caKey in tls.probe.caSecretName (mounted apart) or in tls.secretName;
     empty when caKey is "": the system's CA roots. */}}
{{- define "hardscore.probeCAFile" -}}
{{- with .Values.tls.probe.caKey }}
{{- printf "%s/%s" (ternary (include "hardscore.probeCADir" $) (include "hardscore.tlsDir" $) (not (empty $.Values.tls.probe.caSecretName))) . }}
{{- end }}
{{- end }}

{{/* At install (a cluster to look in; helm template skips it): the CA key must be in its Secret,
     or the in-pod clients fail at start. `kubectl create secret tls` makes no ca.crt. */}}
{{- define "hardscore.checkProbeCA" -}}
{{- if and .Values.tls.enabled .Values.tls.probe.caKey (or (eq .Values.probes.mode "exec") .Values.labelStudio.enabled) }}
{{- $name := .Values.tls.probe.caSecretName | default .Values.tls.secretName }}
{{- $secret := lookup "v1" "Secret" .Release.Namespace $name }}
{{- if and $secret (not (hasKey ($secret.data | default dict) .Values.tls.probe.caKey)) }}
{{- fail (printf "the Secret %s has no key %s, the CA that the exec probes and the Label Studio sidecar verify the server with (kubectl create secret tls makes none): put the CA in a Secret of its own and set tls.probe.caSecretName, or set tls.probe.caKey to tls.crt for a self-signed certificate, or to \"\" when the system's CA roots trust it" $name .Values.tls.probe.caKey) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The handler part of a probe (no timings). */}}
{{- define "hardscore.probeHandler" -}}
{{- $mode := .Values.probes.mode }}
{{- if eq $mode "grpc" }}
grpc:
  port: {{ ternary .Values.ports.health .Values.ports.grpc (eq (include "hardscore.healthPortOn" .) "true") }}
{{- else if eq $mode "tcp" }}
tcpSocket:
  port: grpc
{{- else }}
exec:
  command:
    - python
    - -m
    - hardscore_server.tools.health_probe
    - --server
    - {{ printf "127.0.0.1:%v" .Values.ports.grpc | quote }}
    {{- if .Values.tls.enabled }}
    {{- with include "hardscore.probeCAFile" . }}
    - --tls-ca-file
    - {{ . | quote }}
    {{- else }}
    - --tls
    {{- end }}
    - --tls-server-name
    - {{ include "hardscore.tlsServerName" . | quote }}
    {{- if .Values.tls.clientCA.enabled }}
    - --tls-cert-file
    - {{ printf "%s/%s" (include "hardscore.tlsDir" .) .Values.tls.certKey | quote }}
    - --tls-key-file
    - {{ printf "%s/%s" (include "hardscore.tlsDir" .) .Values.tls.keyKey | quote }}
    {{- end }}
    {{- end }}
{{- end }}
{{- end }}
