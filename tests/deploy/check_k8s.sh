#!/bin/sh
# The Kubernetes manifests under deploy/k8s build and hold together:
#   1. `kubectl kustomize` builds the base and every overlay;
#   2. yamllint (the repo's .yamllint) is clean on every YAML file under
#      deploy/k8s and on every build;
#   3. tests/deploy/k8s_check.py reads every built object into Debian's
#      python3-kubernetes models and refuses fields they lack, checks the
#      LeaderWorkerSet, ServiceMonitor and PrometheusRule against their CRDs'
#      fields, the SGLang flags against each other and the GPUs, the alert
#      expressions against the metrics gateway/metrics.c exports (and with
#      promtool), runs `cascaded --check-config` on every gateway config, and
#      proves each of those checks fails on a mutation.
# A missing tool is a failure, never a skip: scripts/setup.sh installs them.
#   tests/deploy/check_k8s.sh CASCADED SOURCE_DIR
set -u
cascaded=$1
src=$2
k8s=$src/deploy/k8s

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# kubectl 1.32 (Kustomize 5.5) is not Debian's kubernetes-client (1.20).
command -v kubectl >/dev/null 2>&1 || fail "kubectl not found: this needs kubectl >= 1.27 (Kustomize 5), which these machines carry as /usr/bin/kubectl 1.32; Debian's kubernetes-client (1.20) is too old"
kubectl kustomize --help >/dev/null 2>&1 || fail "this kubectl has no 'kustomize' command"
command -v yamllint >/dev/null 2>&1 || fail "yamllint not found (Debian's yamllint; scripts/setup.sh)"
command -v promtool >/dev/null 2>&1 || fail "promtool not found (Debian's prometheus; scripts/setup.sh)"
[ -x /usr/bin/python3 ] || fail "/usr/bin/python3 not found"
/usr/bin/python3 -c 'import kubernetes, yaml' 2>/dev/null ||
    fail "/usr/bin/python3 cannot import kubernetes and yaml (Debian's python3-kubernetes; scripts/setup.sh)"
[ -x "$cascaded" ] || fail "no cascaded at $cascaded"
[ -d "$k8s/base" ] || fail "no $k8s/base"

tmp=$(mktemp -d) || fail "mktemp"
trap 'rm -rf "$tmp"' EXIT

# 1. Build the base and every overlay (components are built through them),
# side by side: each build is mostly kubectl starting up.
builds=""
n=0
for dir in "$k8s/base" "$k8s"/overlays/*/; do
    dir=${dir%/}
    [ -f "$dir/kustomization.yaml" ] || continue
    name=$(basename "$dir")
    (kubectl kustomize "$dir" >"$tmp/$name.yaml" 2>"$tmp/$name.err"; echo $? >"$tmp/$name.rc") &
    builds="$builds $name=$tmp/$name.yaml"
    n=$((n + 1))
done
wait
for b in $builds; do
    name=${b%%=*}
    if [ "$(cat "$tmp/$name.rc")" != 0 ]; then
        cat "$tmp/$name.err" >&2
        fail "kubectl kustomize $name"
    fi
done
# The base and the four shapes README.md documents.
[ "$n" -ge 5 ] || fail "only $n kustomizations built under $k8s (expected the base and 4 overlays)"

# 2. yamllint, strict (warnings fail too), on the sources and the builds.
yamllint -s -c "$src/.yamllint" "$k8s" "$tmp"/*.yaml || fail "yamllint"

# 3. Models, CRD fields, SGLang flags, alerts, configs, and the mutations.
# shellcheck disable=SC2086 # $builds is a list of NAME=PATH words
/usr/bin/python3 "$src/tests/deploy/k8s_check.py" --src "$src" --cascaded "$cascaded" \
    --abstract base $builds || fail "k8s_check.py"
echo "$n kustomizations built, linted and checked"
