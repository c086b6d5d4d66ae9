#!/usr/bin/env bash
# Runs KeyDB's whole test suite: unit, property and integration tests. The
# integration tests start real keydb-node processes on free 127.0.0.1 ports,
# and the S3 tests use a Garage server that this script installs (once, with
# cargo install) and starts, and stops at the end. Conditional writes are
# also tested against a moto S3 server (installed with pip if missing), as
# Garage ignores them. The Kubernetes manifests are validated offline first.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/validate-manifests.sh

./scripts/garage.sh install
./scripts/moto.sh install
garage_dir=$(mktemp -d -t keydb-garage.XXXXXX)
moto_dir=$(mktemp -d -t keydb-moto.XXXXXX)
trap './scripts/garage.sh stop "$garage_dir"; ./scripts/moto.sh stop "$moto_dir"; rm -rf "$garage_dir" "$moto_dir"' EXIT
./scripts/garage.sh start "$garage_dir"
./scripts/moto.sh start "$moto_dir"
set -a
# shellcheck disable=SC1091
. "$garage_dir/env"
# shellcheck disable=SC1091
. "$moto_dir/env"
set +a

cargo test --locked --all-targets "$@"
