#!/usr/bin/env bash
# Validates deploy/kubernetes/ offline against the Kubernetes schemas that
# the kubernetes-validate package (PyPI) ships, strictly (unknown fields are
# errors). Installs it with pip if missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v kubernetes-validate >/dev/null; then
  python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate >&2
fi
kubernetes-validate --strict --quiet deploy/kubernetes/*.yaml
echo "kubernetes manifests: valid" >&2
