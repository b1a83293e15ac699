#!/usr/bin/env bash
# Checks the Kubernetes deployment offline, as `kubectl apply` would need it to be: renders
# deploy/kubernetes/base and both overlays with `kubectl kustomize`, then validates every rendered
# resource against the Kubernetes API schemas with `kubernetes-validate --strict` (unknown fields
# refused, not ignored). The node's own check of each config.json (and a real start of the
# binary on the rendered pod) is in tests/kubernetes.rs.
#
# Usage: scripts/check-kubernetes.sh [VARIANT...]   (default: base overlays/root overlays/child)
# Environment:
#   KUBERNETES_VERSION   the release to validate against (default 1.32.0; kubernetes-validate
#                        --help lists none, an unsupported one fails with a FATAL line)
#   KUBERNETES_OUT_DIR   keep the rendered YAML there (default: a temporary directory)
# Needs kubectl (with its built-in kustomize) and kubernetes-validate (pip); scripts/test.sh
# installs both.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VERSION=${KUBERNETES_VERSION:-1.32.0}

fail() {
  echo "check-kubernetes: error: $*" >&2
  exit 1
}

for tool in kubectl kubernetes-validate; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is not installed (scripts/test.sh installs it)"
done

if [ -n "${KUBERNETES_OUT_DIR:-}" ]; then
  OUT=$KUBERNETES_OUT_DIR
  mkdir -p "$OUT"
else
  OUT=$(mktemp -d)
  trap 'rm -rf "$OUT"' EXIT
fi

variants=("$@")
[ ${#variants[@]} -gt 0 ] || variants=(base overlays/root overlays/child)
for variant in "${variants[@]}"; do
  dir=$ROOT/deploy/kubernetes/$variant
  [ -f "$dir/kustomization.yaml" ] || fail "no kustomization in $dir"
  out=$OUT/${variant//\//-}.yaml
  kubectl kustomize "$dir" >"$out" || fail "kubectl kustomize $variant failed"
  kubernetes-validate --quiet --kubernetes-version "$VERSION" --strict "$out" ||
    fail "$variant: kubernetes-validate refused a resource (above)"
  echo "check-kubernetes: $variant: $(grep -c '^kind:' "$out") resources render and validate against Kubernetes $VERSION" >&2
done
echo "check-kubernetes: OK"
