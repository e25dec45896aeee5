#!/usr/bin/env bash
# Smoke test of the `fleet` overlay on a real cluster (kind in .github/workflows/kind.yml).
#
#     scripts/k8s/smoke.sh IMAGE
#
# IMAGE (name:tag) must already be on the cluster's nodes (`kind load docker-image`), and
# the cluster must know the Prometheus Operator's CRDs (ServiceMonitor, PrometheusRule).
# Creates the namespace `iris` and its two Secrets, applies the overlay with the image set
# to IMAGE, then checks: every serving replica predicts and refuses /retrain without the
# token; the training Job registers a champion; a second run of the pipeline on the same
# data (a Job made from the CronJob) is the same model again, so the promotion gate keeps
# it as challenger and every replica keeps v1; a /retrain posted to one replica succeeds,
# is not promoted either, and its job record is readable from every replica; an explicit
# promotion and a rollback with the CLI in a serving pod reach every replica.
set -euo pipefail

image="${1:?usage: scripts/k8s/smoke.sh IMAGE (name:tag, loaded into the cluster)}"
ns=iris
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
token="$(openssl rand -hex 16)"
flower='{"sepal_length": 6.9, "sepal_width": 3.1, "petal_length": 5.8, "petal_width": 2.3}'
forwards=()

log() { echo "smoke: $*" >&2; }

# kustomize resolves bases relative to the kustomization: the smoke overlay sits next to
# the real ones (and is removed at exit).
work="$(mktemp -d "$root/deploy/k8s/overlays/.smoke-XXXXXX")"
diagnose() {
    log "FAILED; cluster state follows"
    kubectl -n "$ns" get all,pvc,jobs -o wide || true
    kubectl -n "$ns" describe pods || true
    for pod in $(kubectl -n "$ns" get pods -o name); do
        echo "----- logs $pod"
        kubectl -n "$ns" logs "$pod" --all-containers --tail=200 || true
    done
}
finish() {
    local status=$?
    [ "$status" -eq 0 ] || diagnose
    for pid in "${forwards[@]}"; do kill "$pid" 2>/dev/null || true; done
    rm -rf "$work"
    exit "$status"
}
trap finish EXIT

placeholder="$(awk '/newName:/ {print $2; exit}' "$root/deploy/k8s/components/image/kustomization.yaml")"
cat >"$work/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - ../fleet
images:
  - name: $placeholder
    newName: ${image%:*}
    newTag: ${image##*:}
patches:
  # A 4-CPU runner: three replicas, the registry and the Job fit with smaller requests.
  - target:
      kind: Deployment
      name: iris-serving
    patch: |-
      - op: replace
        path: /spec/template/spec/containers/0/resources/requests/cpu
        value: 250m
EOF

log "namespace and secrets"
kubectl create namespace "$ns" --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" create secret generic iris-admin --from-literal=token="$token" \
    --dry-run=client -o yaml | kubectl apply -f -
kubectl -n "$ns" create secret generic iris-postgres \
    --from-literal=password="$(openssl rand -hex 16)" --dry-run=client -o yaml | kubectl apply -f -

log "apply the fleet overlay with $image"
kubectl apply -k "$work"
kubectl -n "$ns" rollout status statefulset/iris-postgres --timeout=300s
kubectl -n "$ns" rollout status deployment/iris-mlflow --timeout=300s
kubectl -n "$ns" wait --for=condition=complete job/iris-train --timeout=600s
kubectl -n "$ns" rollout status deployment/iris-serving --timeout=600s

# forward POD: port-forward the pod's HTTP port to a local one, appended to `ports`.
forward() {
    local port=$((20000 + RANDOM % 10000))
    kubectl -n "$ns" port-forward "$1" "$port:3000" >/dev/null 2>&1 &
    forwards+=("$!")
    for _ in $(seq 30); do
        curl -fsS "http://127.0.0.1:$port/livez" >/dev/null 2>&1 && break
        sleep 1
    done
    ports+=("$port")
}

# served_version PORT: the model version a replica answers predict with ("none" on error).
served_version() {
    { curl -sS --max-time 10 "http://127.0.0.1:$1/predict" -H 'content-type: application/json' \
        -d "$flower" 2>/dev/null || true; } |
        python3 -c 'import json, sys
try:
    print(json.load(sys.stdin)["model"]["version"])
except (ValueError, KeyError, TypeError):
    print("none")'
}

# wait_version PORT VERSION: poll until the replica serves VERSION (3 minutes at most).
wait_version() {
    for _ in $(seq 90); do
        [ "$(served_version "$1")" = "$2" ] && return 0
        sleep 2
    done
    log "replica on port $1 still serves v$(served_version "$1"), expected v$2"
    return 1
}

mapfile -t pods < <(kubectl -n "$ns" get pods -l app.kubernetes.io/component=serving -o name)
[ "${#pods[@]}" -ge 3 ] || { log "expected 3 serving pods, got ${#pods[@]}" && false; }
ports=()
for pod in "${pods[@]}"; do forward "$pod"; done

log "every replica predicts and guards /retrain"
for port in "${ports[@]}"; do
    answer="$(curl -fsS "http://127.0.0.1:$port/predict" -H 'content-type: application/json' -d "$flower")"
    echo "$answer" | grep -q '"species":"Iris-virginica"'
    code="$(curl -s -o /dev/null -w '%{http_code}' -X POST "http://127.0.0.1:$port/retrain")"
    [ "$code" = 401 ] || { log "/retrain without a token answered $code" && false; }
done

log "the training Job's champion (v1) is served by every replica"
for port in "${ports[@]}"; do wait_version "$port" 1; done

# cli ARGS: the training CLI in a serving pod, with the pod's registry settings.
cli() {
    kubectl -n "$ns" exec deploy/iris-serving -- \
        sh -c "cd /home/bentoml/bento/src && python -m training.cli $*"
}

log "a second pipeline run on the same data (Job from the CronJob): v2, kept as challenger"
kubectl -n "$ns" create job --from=cronjob/iris-train iris-train-smoke
kubectl -n "$ns" wait --for=condition=complete job/iris-train-smoke --timeout=600s
[ "$(cli champion)" = 1 ] || { log "the gate promoted an identical retrain" && false; }
sleep 10 # a few reload polls: still v1 everywhere
for port in "${ports[@]}"; do wait_version "$port" 1; done

log "/retrain through one replica: its job is readable from every replica"
started="$(curl -fsS -X POST "http://127.0.0.1:${ports[0]}/retrain" -H "Authorization: Bearer $token")"
status_url="$(echo "$started" | python3 -c 'import json, sys; print(json.load(sys.stdin)["status_url"])')"
for _ in $(seq 150); do
    state="$(curl -fsS "http://127.0.0.1:${ports[0]}$status_url" -H "Authorization: Bearer $token" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])')"
    [ "$state" = queued ] || [ "$state" = running ] || break
    sleep 2
done
[ "$state" = succeeded ] || { log "retrain ended $state" && false; }
for port in "${ports[@]}"; do
    job="$(curl -fsS "http://127.0.0.1:$port$status_url" -H "Authorization: Bearer $token")"
    echo "$job" | grep -q '"state":"succeeded"'
    echo "$job" | grep -q '"promoted":false' || { log "identical retrain promoted: $job" && false; }
    wait_version "$port" 1
done
log "promotion and rollback with the CLI in a serving pod (docs/deploy-kubernetes.md)"
cli promote 3
for port in "${ports[@]}"; do wait_version "$port" 3; done
cli promote 1
for port in "${ports[@]}"; do wait_version "$port" 1; done
log "passed"
