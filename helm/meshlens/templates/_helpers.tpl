{{/*
Helpers of the meshlens chart. Every name starts with "meshlens." so that a parent chart's own
helpers never collide with these.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "meshlens.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" -}}
{{- end -}}

{{/* The prefix of every object name: fullnameOverride, or <release>-<name> (just <release> when it says the name). */}}
{{- define "meshlens.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "meshlens.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The name of one component's objects: (list $ "collector"). Prefixes stay under 40 characters, so 63 is never reached. */}}
{{- define "meshlens.componentName" -}}
{{- $root := index . 0 -}}
{{- printf "%s-%s" (include "meshlens.fullname" $root) (index . 1) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels that select one component's pods: (list $ "collector"). Never change on upgrade. */}}
{{- define "meshlens.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ include "meshlens.name" $root }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{/* Every label of one component's objects: (list $ "collector"). */}}
{{- define "meshlens.labels" -}}
{{- $root := index . 0 -}}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "meshlens.selectorLabels" . }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: meshlens
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
{{- with $root.Values.commonLabels }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* Labels of the Prometheus Operator objects: the component's, plus the selector labels Prometheus needs. */}}
{{- define "meshlens.monitoringLabels" -}}
{{ include "meshlens.labels" . }}
{{- with (index . 0).Values.prometheusOperator.selectorLabels }}
{{ toYaml . }}
{{- end -}}
{{- end -}}

{{/* An image reference: repository@digest when a digest is set, else repository:tag. */}}
{{- define "meshlens.image" -}}
{{- if .digest -}}
{{- printf "%s@%s" .repository .digest -}}
{{- else -}}
{{- printf "%s:%s" .repository .tag -}}
{{- end -}}
{{- end -}}

{{/* The pod-level security context: never root, the runtime's default seccomp profile. */}}
{{- define "meshlens.podSecurityContext" -}}
runAsNonRoot: true
{{- with .Values.podSecurity }}
{{- if not (kindIs "invalid" .runAsUser) }}
runAsUser: {{ .runAsUser }}
{{- end }}
{{- if not (kindIs "invalid" .runAsGroup) }}
runAsGroup: {{ .runAsGroup }}
{{- end }}
{{- if not (kindIs "invalid" .fsGroup) }}
fsGroup: {{ .fsGroup }}
{{- end }}
{{- end }}
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* The container-level security context: read-only root filesystem, no capabilities, no escalation. */}}
{{- define "meshlens.containerSecurityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
privileged: false
capabilities:
  drop:
    - ALL
{{- end -}}

{{/* imagePullSecrets of a pod spec, when any (empty otherwise, so use it inside `with`). */}}
{{- define "meshlens.imagePullSecrets" -}}
{{- with .Values.imagePullSecrets -}}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end -}}
{{- end -}}

{{/*
The apiVersion to render a custom resource with, or "" when the cluster has none of the candidates:
(list $ "PodMonitor" "monitoring.coreos.com/v1"). The first candidate the cluster serves wins, so
a newer version is preferred and an older cluster still gets the resource.
*/}}
{{- define "meshlens.crdApiVersion" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- $found := "" -}}
{{- range $candidate := slice . 2 -}}
{{- if and (not $found) ($root.Capabilities.APIVersions.Has (printf "%s/%s" $candidate $kind)) -}}
{{- $found = $candidate -}}
{{- end -}}
{{- end -}}
{{- $found -}}
{{- end -}}

{{/* The custom resources the chart may render: kind -> the apiVersions it can use (newest first) and who installs the CRD. */}}
{{- define "meshlens.customResources" -}}
PodMonitor: {from: the Prometheus Operator, apiVersions: [monitoring.coreos.com/v1]}
ServiceMonitor: {from: the Prometheus Operator, apiVersions: [monitoring.coreos.com/v1]}
PrometheusRule: {from: the Prometheus Operator, apiVersions: [monitoring.coreos.com/v1]}
Telemetry: {from: Istio, apiVersions: [telemetry.istio.io/v1, telemetry.istio.io/v1alpha1]}
PeerAuthentication: {from: Istio, apiVersions: [security.istio.io/v1, security.istio.io/v1beta1]}
{{- end -}}

{{/* The apiVersion for one kind of custom resource, or "" when its CRD is missing: (list $ "PodMonitor"). */}}
{{- define "meshlens.apiVersionFor" -}}
{{- $root := index . 0 -}}
{{- $kind := index . 1 -}}
{{- $candidates := (index (include "meshlens.customResources" $root | fromYaml) $kind).apiVersions -}}
{{- include "meshlens.crdApiVersion" (concat (list $root $kind) $candidates) -}}
{{- end -}}

{{/* The DNS name of a Service of the release: (list $ "collector"). */}}
{{- define "meshlens.serviceHost" -}}
{{- $root := index . 0 -}}
{{- printf "%s.%s.svc" (include "meshlens.componentName" .) $root.Release.Namespace -}}
{{- end -}}

{{/* The cluster-scoped RBAC objects' name: the namespace in it keeps two same-named releases apart. */}}
{{- define "meshlens.collector.clusterRoleName" -}}
{{- printf "%s-%s" .Release.Namespace (include "meshlens.componentName" (list . "collector")) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The collector Service that services and Envoy send to: the node-local agent when enabled, else the gateway. */}}
{{- define "meshlens.collector.entryComponent" -}}
{{- if .Values.collector.agent.enabled -}}agent{{- else -}}collector{{- end -}}
{{- end -}}

{{/* ---- Placeholders of the generated collector configs (files/collector/*.yaml): each renders JSON. ---- */}}

{{/* Where the gateway exports traces: Jaeger in the release, or the external endpoint. */}}
{{- define "meshlens.collector.tracesEndpoint" -}}
{{- if eq .Values.jaeger.mode "inCluster" -}}
{{- printf "%s:%d" (include "meshlens.serviceHost" (list . "jaeger")) (int .Values.ports.otlpGrpc) | toJson -}}
{{- else -}}
{{- .Values.jaeger.external.endpoint | toJson -}}
{{- end -}}
{{- end -}}

{{/* TLS to the traces backend: plaintext inside the release (the mesh encrypts it when present), as configured outside. */}}
{{- define "meshlens.collector.tracesTls" -}}
{{- dict "insecure" (or (eq .Values.jaeger.mode "inCluster") .Values.jaeger.external.insecure) | toJson -}}
{{- end -}}

{{/* The environment variable that carries the external backend's Authorization header, from its Secret. */}}
{{- define "meshlens.collector.tracesAuthorizationEnv" -}}MESHLENS_TRACES_AUTHORIZATION{{- end -}}

{{/* Headers to the traces backend, as name/value pairs: the Authorization header from an existing Secret, when one is named. */}}
{{- define "meshlens.collector.tracesHeaders" -}}
{{- if and (eq .Values.jaeger.mode "external") .Values.jaeger.external.authorizationSecret.name -}}
{{- list (dict "name" "authorization" "value" (printf "${env:%s}" (include "meshlens.collector.tracesAuthorizationEnv" .))) | toJson -}}
{{- else -}}
{{- list | toJson -}}
{{- end -}}
{{- end -}}

{{/* The headless gateway Service, whose DNS name lists every gateway pod (for the agents' load balancing). */}}
{{- define "meshlens.collector.gatewayHeadlessHost" -}}
{{- printf "%s.%s.svc" (include "meshlens.componentName" (list . "collector-headless")) .Release.Namespace | toJson -}}
{{- end -}}

{{/*
A collector-style config from files/: (list $ "collector/gateway.yaml"). The file is generated by
meshlens build from collector/ (Python); its placeholders are filled here from the values.
*/}}
{{- define "meshlens.generatedConfig" -}}
{{- $root := index . 0 -}}
{{- $path := printf "files/%s" (index . 1) -}}
{{- $text := $root.Files.Get $path -}}
{{- if not $text -}}
{{- fail (printf "%s is missing from the chart: run `meshlens build` (or `python -m meshlens_collector --write`)" $path) -}}
{{- end -}}
{{- $config := tpl $text $root | fromYaml -}}
{{- if hasKey $config "Error" -}}
{{- fail (printf "%s does not render to YAML: %s" $path $config.Error) -}}
{{- end -}}
{{- toYaml $config -}}
{{- end -}}

{{/* The environment every collector-style container needs: the pod IP it listens on. */}}
{{- define "meshlens.podIpEnv" -}}
- name: MESHLENS_POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
{{- end -}}

{{/* The two OTLP ports of a Service; appProtocol tells Istio which protocol each speaks. */}}
{{- define "meshlens.otlpServicePorts" -}}
- name: otlp-grpc
  port: {{ .Values.ports.otlpGrpc }}
  targetPort: otlp-grpc
  protocol: TCP
  appProtocol: grpc
- name: otlp-http
  port: {{ .Values.ports.otlpHttp }}
  targetPort: otlp-http
  protocol: TCP
  appProtocol: http
{{- end -}}

{{/* The name of an object made from a file of files/: (list $ "dashboard" "files/dashboards/RED_uid.json") -> <fullname>-dashboard-red-uid. */}}
{{- define "meshlens.fileObjectName" -}}
{{- $root := index . 0 -}}
{{- $file := index . 2 | base -}}
{{- $stem := regexReplaceAll "[^a-z0-9-]+" ($file | trimSuffix (ext $file) | lower) "-" | trimAll "-" -}}
{{- printf "%s-%s-%s" (include "meshlens.fullname" $root) (index . 1) $stem | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The NetworkPolicy ingress rule that lets Prometheus, in the monitoring namespaces, scrape the telemetry port. */}}
{{- define "meshlens.networkPolicyScrape" -}}
{{- with .Values.networkPolicy.monitoringNamespaces -}}
- ports:
    - port: telemetry
      protocol: TCP
  from:
    {{- range . }}
    - namespaceSelector:
        matchLabels:
          kubernetes.io/metadata.name: {{ . }}
    {{- end }}
{{- end }}
{{- end -}}

{{/* The components of the release that expose their own metrics (one ServiceMonitor each), as a YAML list. */}}
{{- define "meshlens.monitoredComponents" -}}
{{- $components := list -}}
{{- if .Values.collector.enabled }}{{ $components = append $components "collector" }}{{ end -}}
{{- if and .Values.collector.enabled .Values.collector.agent.enabled }}{{ $components = append $components "agent" }}{{ end -}}
{{- if eq .Values.jaeger.mode "inCluster" }}{{ $components = append $components "jaeger" }}{{ end -}}
{{- toYaml $components -}}
{{- end -}}

{{/*
NOTES.txt lines about the custom resources and generated files: what was rendered, and what was
skipped and why. A YAML list of lines.
*/}}
{{- define "meshlens.notes.customResources" -}}
{{- $v := .Values -}}
{{- $pm := $v.prometheusOperator.podMonitor -}}
{{- $rules := len (.Files.Glob "files/rules/*.yaml") -}}
{{- $monitored := include "meshlens.monitoredComponents" . | fromYamlArray -}}
{{- $what := dict
      "PodMonitor" (printf "pods labelled %s=%q in %s, port %s" $pm.podLabelKey $pm.podLabelValue (ternary "every namespace" (join ", " $pm.namespaces) (empty $pm.namespaces)) $pm.portName)
      "ServiceMonitor" (printf "own metrics (otelcol_*) of %s" (join ", " $monitored))
      "PrometheusRule" (ternary "none yet, files/rules/ is empty (run meshlens build)" (printf "%d from files/rules/" $rules) (eq $rules 0))
      "Telemetry" (printf "Envoy traces %v%% of requests to the %s extension provider" $v.istio.telemetry.samplingPercentage $v.istio.telemetry.providerName)
      "PeerAuthentication" (printf "STRICT mutual TLS in %s" (join ", " $v.istio.peerAuthentication.namespaces)) -}}
{{- $wanted := dict
      "PodMonitor" $pm.enabled
      "ServiceMonitor" (and $v.prometheusOperator.serviceMonitors.enabled (gt (len $monitored) 0))
      "PrometheusRule" $v.prometheusOperator.rules.enabled
      "Telemetry" (and $v.istio.telemetry.enabled $v.collector.enabled)
      "PeerAuthentication" (and $v.istio.peerAuthentication.enabled (gt (len $v.istio.peerAuthentication.namespaces) 0)) -}}
{{- $candidates := include "meshlens.customResources" . | fromYaml -}}
{{- $lines := list -}}
{{- range $kind := list "PodMonitor" "ServiceMonitor" "PrometheusRule" "Telemetry" "PeerAuthentication" -}}
{{- if get $wanted $kind -}}
{{- $api := include "meshlens.apiVersionFor" (list $ $kind) -}}
{{- if $api -}}
{{- $lines = append $lines (printf "- %s (%s): %s." $kind $api (get $what $kind)) -}}
{{- else -}}
{{- $crd := get $candidates $kind -}}
{{- $lines = append $lines (printf "- %s: SKIPPED, the cluster has no %s CRD (%s); install %s, then upgrade this release." $kind $kind (join " or " $crd.apiVersions) $crd.from) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if $v.grafana.dashboards.enabled -}}
{{- $dashboards := len (.Files.Glob "files/dashboards/*.json") -}}
{{- $lines = append $lines (printf "- Grafana dashboards: %s." (ternary "none yet, files/dashboards/ is empty (run meshlens build)" (printf "%d ConfigMaps labelled %s=%q, folder %q" $dashboards $v.grafana.dashboards.labelKey $v.grafana.dashboards.labelValue $v.grafana.dashboards.folder) (eq $dashboards 0))) -}}
{{- end -}}
{{- if $v.grafana.datasources.enabled -}}
{{- $lines = append $lines (printf "- Grafana datasources: a ConfigMap labelled %s=%q." $v.grafana.datasources.labelKey $v.grafana.datasources.labelValue) -}}
{{- end -}}
{{- if $v.networkPolicy.enabled -}}
{{- $lines = append $lines "- NetworkPolicies admit only OTLP, scrapes and queries." -}}
{{- end -}}
{{- toYaml $lines -}}
{{- end -}}

{{/* The release notes (NOTES.txt is just this): a named template, so that tests can render them with --api-versions. */}}
{{- define "meshlens.notes" -}}
{{- $entry := include "meshlens.serviceHost" (list . (include "meshlens.collector.entryComponent" .)) }}
{{- $pm := .Values.prometheusOperator.podMonitor }}
meshlens {{ .Chart.AppVersion }} is installed as release {{ .Release.Name }} in namespace {{ .Release.Namespace }}.

What this release runs
{{- if .Values.collector.enabled }}
- OpenTelemetry Collector gateway ({{ .Values.collector.gateway.replicas }} replica(s)): {{ include "meshlens.serviceHost" (list . "collector") }}, OTLP gRPC {{ .Values.ports.otlpGrpc }} and HTTP {{ .Values.ports.otlpHttp }}.
  Keeps every error, every trace over {{ .Values.collector.tailSampling.slowTraceThresholdMs }} ms and {{ .Values.collector.tailSampling.probabilisticPercentage }}% of the rest.
{{- if .Values.collector.agent.enabled }}
- Collector agent on every node: {{ include "meshlens.serviceHost" (list . "agent") }} (node-local), routing each trace to one gateway pod.
{{- end }}
{{- else }}
- No collector (collector.enabled=false): point services at your own.
{{- end }}
{{- if eq .Values.jaeger.mode "inCluster" }}
- Jaeger v2 ({{ .Values.jaeger.storage.type }} storage): UI and API at http://{{ include "meshlens.serviceHost" (list . "jaeger") }}:{{ .Values.ports.jaegerQuery }}
  kubectl -n {{ .Release.Namespace }} port-forward svc/{{ include "meshlens.componentName" (list . "jaeger") }} {{ .Values.ports.jaegerQuery }}
{{- else }}
- Traces are exported to {{ .Values.jaeger.external.endpoint }} (jaeger.mode=external).
{{- end }}
{{- range $line := include "meshlens.notes.customResources" . | fromYamlArray }}
{{ $line }}
{{- end }}

What a service needs
1. The import line, first in the service:      import meshlens.auto
2. In its pod template:
     metadata:
       labels:
         {{ $pm.podLabelKey }}: {{ $pm.podLabelValue | quote }}
     spec:
       containers:
         - ports:
             - name: {{ $pm.portName }}
               containerPort: {{ $pm.metricsPort }}
           env:
             - name: OTEL_EXPORTER_OTLP_ENDPOINT
               value: {{ ternary (printf "http://%s:%d" $entry (int .Values.ports.otlpHttp)) "<your collector's OTLP/HTTP URL>" .Values.collector.enabled }}
             - name: K8S_POD_UID          # lets the collector find the pod of every span
               valueFrom:
                 fieldRef:
                   fieldPath: metadata.uid
{{- if and .Values.istio.telemetry.enabled .Values.collector.enabled (include "meshlens.apiVersionFor" (list . "Telemetry")) }}

Istio: the mesh config needs this extension provider (istiod's meshConfig, for example
`istioctl install --set-file` or the istiod chart's values); the Telemetry resource refers to it:
  meshConfig:
    extensionProviders:
      - name: {{ .Values.istio.telemetry.providerName }}
        opentelemetry:
          service: {{ $entry }}.cluster.local
          port: {{ .Values.ports.otlpGrpc }}
{{- end }}
{{- if and .Values.collector.enabled (gt (int .Values.collector.gateway.replicas) 1) (not .Values.collector.agent.enabled) }}

WARNING: {{ .Values.collector.gateway.replicas }} gateway replicas without the agent: spans of one trace can reach
different replicas, and each samples its part alone. Set collector.agent.enabled=true.
{{- end }}
{{- if and (eq .Values.jaeger.mode "inCluster") (eq .Values.jaeger.storage.type "badger") (not .Values.jaeger.storage.badger.persistence.enabled) }}

NOTE: Badger writes to an emptyDir: traces are lost when the Jaeger pod is rescheduled
(jaeger.storage.badger.persistence.enabled=true keeps them).
{{- end }}
{{- end -}}
