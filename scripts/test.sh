#!/usr/bin/env bash
# Runs KeyDB's whole test suite: unit, property and integration tests (the
# integration tests start real keydb-node processes on free 127.0.0.1 ports).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --locked --all-targets "$@"
