{{/* Names: <release>-trainguard unless the release name already says trainguard. */}}
{{- define "trainguard.fullname" -}}
{{- if contains "trainguard" .Release.Name -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-trainguard" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}
{{- if and (gt (int .Values.job.parallelism) 1) (eq .Values.journal.type "pvc") (ne .Values.job.completionMode "Indexed") -}}
{{- fail "job.parallelism > 1 with a journal claim needs job.completionMode: Indexed: each pod writes the journal file of its own index." -}}
{{- end -}}
{{- end -}}

{{- define "trainguard.labels" -}}
app.kubernetes.io/name: trainguard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: trainguard
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "trainguard.selectorLabels" -}}
app.kubernetes.io/name: trainguard
app.kubernetes.io/instance: {{ .Release.Name }}
trainguard.io/monitored: "true"
{{- end -}}

{{- define "trainguard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "trainguard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- if and (gt (int .Values.job.parallelism) 1) (eq .Values.journal.type "pvc") (ne .Values.job.completionMode "Indexed") -}}
{{- fail "job.parallelism > 1 with a journal claim needs job.completionMode: Indexed: each pod writes the journal file of its own index." -}}
{{- end -}}
{{- end -}}

{{- define "trainguard.tokenSecret" -}}
{{- default .Values.token.secretName .Values.token.existingSecret -}}
{{- end -}}

{{- define "trainguard.tokenFile" -}}
{{- printf "%s/token" .Values.token.mountDir -}}
{{- end -}}

{{- define "trainguard.checkpointsClaim" -}}
{{- default (printf "%s-checkpoints" (include "trainguard.fullname" .)) .Values.checkpoints.existingClaim -}}
{{- end -}}

{{- define "trainguard.journalClaim" -}}
{{- default (printf "%s-journal" (include "trainguard.fullname" .)) .Values.journal.existingClaim -}}
{{- end -}}

{{/* application.properties of the policy ConfigMap, from the policy map. */}}
{{- define "trainguard.policyProperties" -}}
# trainguard policy defaults for every run (Helm values: policy).
{{- range $key, $value := .Values.policy }}
trainguard.policy.{{ $key }}={{ $value }}
{{- end }}
{{- end -}}

{{/* Both containers must be able to use the transport chosen. */}}
{{- define "trainguard.checkTransport" -}}
{{- if and (eq .Values.transport "socket") (ne (int .Values.trainer.runAsUser) (int .Values.sidecar.runAsUser)) -}}
{{- fail (printf "trainer.runAsUser (%v) differs from sidecar.runAsUser (%v): the sidecar's Unix socket accepts connections from its own user only. Set transport: tcp (loopback, bearer token) or run both as one user." .Values.trainer.runAsUser .Values.sidecar.runAsUser) -}}
{{- end -}}
{{- if and (gt (int .Values.job.parallelism) 1) (eq .Values.journal.type "pvc") (has "ReadWriteOnce" .Values.journal.accessModes) (not .Values.journal.existingClaim) -}}
{{- fail "job.parallelism > 1 with a ReadWriteOnce journal claim: pods on different nodes cannot share it. Use journal.accessModes: [ReadWriteMany] (each pod then writes its own file) or journal.type: emptyDir." -}}
{{- end -}}
{{- if and (gt (int .Values.job.parallelism) 1) (eq .Values.journal.type "pvc") (ne .Values.job.completionMode "Indexed") -}}
{{- fail "job.parallelism > 1 with a journal claim needs job.completionMode: Indexed: each pod writes the journal file of its own index." -}}
{{- end -}}
{{- end -}}
