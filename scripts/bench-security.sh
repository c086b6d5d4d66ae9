#!/usr/bin/env bash
# What authentication and TLS cost: two nodes side by side on this machine,
# one on plain HTTP without tokens, one on HTTPS with a write token, loaded
# in turns with the same batches (keydb-admin bench: the client's binary
# path, pooled connections), fresh keys each run.
#
#   scripts/bench-security.sh [--keys N] [--rounds R] [--batch B] [--concurrency C]
#
# The last line is:
#   RESULT put_secure_vs_plain=<ratio> get_secure_vs_plain=<ratio>
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=2000000 ROUNDS=3 BATCH=1000 CONCURRENCY=8
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    *) echo "usage: $0 [--keys N] [--rounds R] [--batch B] [--concurrency C]" >&2; exit 2 ;;
  esac
done

cargo build --release --locked --bins --example test_certs >&2
ADMIN=${CARGO_TARGET_DIR:-target}/release/keydb-admin
NODE=${CARGO_TARGET_DIR:-target}/release/keydb-node
. scripts/lib.sh

tmp=$(mktemp -d -t keydb-bench-sec.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

"${CARGO_TARGET_DIR:-target}"/release/examples/test_certs "$tmp/tls"
token=$("$ADMIN" --json token --name bench --scope write | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["token"]); open(sys.argv[1], "w").write(d["line"] + "\n")' "$tmp/tokens")

plain=$(free_port); secure=$(free_port)
start_node() { # port name extra-env...
  local port=$1 name=$2; shift 2
  env KEYDB_PORT="$port" KEYDB_NODE_ADDRESSES="127.0.0.1:$port" KEYDB_DATA_DIR="$tmp/$name-data" \
    KEYDB_STORAGE_PATH="$tmp/$name-objects" KEYDB_SNAPSHOT_INTERVAL=0s RUST_LOG=warn "$@" \
    "$NODE" > "$tmp/$name.log" 2>&1 &
  pids+=("$!")
}
start_node "$plain" plain
start_node "$secure" secure KEYDB_AUTH_TOKENS_FILE="$tmp/tokens" \
  KEYDB_TLS_CERT_FILE="$tmp/tls/server.crt" KEYDB_TLS_KEY_FILE="$tmp/tls/server.key"
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$plain/readyz" >/dev/null \
    && curl -sf --cacert "$tmp/tls/ca.crt" "https://127.0.0.1:$secure/readyz" >/dev/null && break
  sleep 0.1
done

common=(--keys "$KEYS" --batch "$BATCH" --concurrency "$CONCURRENCY" --ttl 24h --json)
echo "$ROUNDS rounds of $KEYS keys on each node, batches of $BATCH, $CONCURRENCY concurrent" >&2
for r in $(seq "$ROUNDS"); do
  "$ADMIN" --addresses "127.0.0.1:$plain" bench "${common[@]}" --key-prefix "p$r-" > "$tmp/plain-$r.json"
  KEYDB_TOKEN=$token "$ADMIN" --addresses "https://127.0.0.1:$secure" --ca-file "$tmp/tls/ca.crt" \
    bench "${common[@]}" --key-prefix "s$r-" > "$tmp/secure-$r.json"
  echo "  round $r done" >&2
done

python3 - "$tmp" "$ROUNDS" <<'PY'
import json, sys
tmp, rounds = sys.argv[1], int(sys.argv[2])
def rate(kind, r, op):
    return {p["name"]: p for p in json.load(open(f"{tmp}/{kind}-{r}.json"))}[op]["keys_per_sec"]
print(f"{'':10}{'plain keys/s':>16}{'tls+token keys/s':>18}{'ratio':>8}")
total = {}
for op in ("put", "get"):
    for r in range(1, rounds + 1):
        p, s = rate("plain", r, op), rate("secure", r, op)
        print(f"{op} #{r:<5}{p:>16,.0f}{s:>18,.0f}{s / p:>8.2f}")
    p = sum(rate("plain", r, op) for r in range(1, rounds + 1))
    s = sum(rate("secure", r, op) for r in range(1, rounds + 1))
    total[op] = s / p
print(f"RESULT put_secure_vs_plain={total['put']:.2f} get_secure_vs_plain={total['get']:.2f}")
PY
