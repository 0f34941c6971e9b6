#!/usr/bin/env bash
# Offline checks of deploy/: Kubernetes manifests against the Kubernetes JSON schemas,
# alert rules with promtool, the PrometheusRule in sync with the rules file, and the
# Dockerfile's build command. Run from anywhere; installs nothing (see .ci/run).
#   deploy/validate.sh           check
#   deploy/validate.sh --write   regenerate kubernetes/base/prometheusrule.yaml from alerts/
set -euo pipefail
cd "$(dirname "$0")"
k8s_version=1.31.0
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

render_rule() {
    python3 - "$1" <<'PY'
import sys, yaml
rules = yaml.safe_load(open("alerts/pix-auth-proxy.rules.yaml"))
doc = {"apiVersion": "monitoring.coreos.com/v1", "kind": "PrometheusRule",
       "metadata": {"name": "pix-auth-proxy", "labels": {"prometheus": "k8s", "role": "alert-rules"}},
       "spec": rules}
with open(sys.argv[1], "w") as f:
    f.write("# Generated from deploy/alerts/pix-auth-proxy.rules.yaml by deploy/validate.sh --write; do not edit by hand.\n")
    yaml.safe_dump(doc, f, sort_keys=False, width=1000)
PY
}

if [ "${1:-}" = "--write" ]; then
    render_rule kubernetes/base/prometheusrule.yaml
    echo "wrote kubernetes/base/prometheusrule.yaml"
    exit 0
fi

echo "--- alert rules (promtool)"
promtool check rules alerts/pix-auth-proxy.rules.yaml
render_rule "$out/prometheusrule.yaml"
if ! diff -u kubernetes/base/prometheusrule.yaml "$out/prometheusrule.yaml"; then
    echo "kubernetes/base/prometheusrule.yaml is out of date: run deploy/validate.sh --write" >&2
    exit 1
fi

echo "--- manifests (kubectl kustomize + kubernetes-validate $k8s_version, strict)"
for overlay in kubernetes/base kubernetes/shared-cache; do
    kubectl kustomize "$overlay" > "$out/rendered.yaml"
    # PrometheusRule is a CRD without a built-in schema: it is checked through promtool above.
    python3 -m kubernetes_validate --strict --quiet -k "$k8s_version" "$out/rendered.yaml"
    grep -q 'restartPolicy: Always' "$out/rendered.yaml" || { echo "$overlay: the sidecar is not a native sidecar" >&2; exit 1; }
    echo "$overlay: ok"
done
python3 -m kubernetes_validate --strict --quiet -k "$k8s_version" kubernetes/base/secrets.example.yaml
echo "kubernetes/base/secrets.example.yaml: ok"

echo "--- Dockerfile"
# The build stage's command must be the profile-guided build .ci/run also runs, and the
# image must ship what it builds.
build_cmd=$(sed -n 's/^RUN \(.*pgo-build\.sh\)$/\1/p' Dockerfile)
case "$build_cmd" in
    "PGO_NO_INSTALL=1 bash deploy/pgo-build.sh") ;;
    *) echo "unexpected build command in deploy/Dockerfile: '$build_cmd'" >&2; exit 1 ;;
esac
grep -q '^COPY --from=build /src/target/pgo/pix-auth-proxy ' Dockerfile ||
    { echo "Dockerfile: the runtime image must copy target/pgo/pix-auth-proxy" >&2; exit 1; }
for d in bench certs.example; do
    grep -q "^COPY $d " Dockerfile || { echo "Dockerfile: the training needs $d/ in the build stage" >&2; exit 1; }
done
grep -q '^USER nonroot' Dockerfile || { echo "Dockerfile: runtime user must be non-root" >&2; exit 1; }
echo "build stage: $build_cmd"
