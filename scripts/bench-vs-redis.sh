#!/usr/bin/env bash
# KeyDB against Redis, side by side on this machine, with the same keys, the
# same batches and the same client concurrency.
#
#   scripts/bench-vs-redis.sh [--keys N] [--batch B] [--concurrency C] [--key-len L]
#
# Starts one keydb-node (WAL on, default settings) and one redis-server (no
# persistence) on 127.0.0.1, puts N distinct keys into each in batches
# (KeyDB: the client's binary fast path; Redis: pipelined `SET k 1 EX ttl`,
# one connection per concurrent batch), then gets them back mixed with as
# many absent keys (Redis: pipelined `EXISTS`), then claims the dedup way, a
# mix of seen and new keys (Redis: pipelined `SET k 1 NX EX ttl`). Every
# answer is checked.
# Measures each server's RSS growth, then KeyDB's get p99 with and without a
# full snapshot of all keys being written, and how long a `kill -9`ed node
# holding every key takes to be ready again. The last line is:
#   RESULT put_ratio=<keydb/redis> get_ratio=<keydb/redis> claim_ratio=<keydb/redis> keydb_bytes_per_key=<n> redis_bytes_per_key=<n>
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=10000000 BATCH=1000 CONCURRENCY=8 KEY_LEN=16
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --key-len) KEY_LEN=$2; shift 2 ;;
    *) echo "usage: $0 [--keys N] [--batch B] [--concurrency C] [--key-len L]" >&2; exit 2 ;;
  esac
done

if ! command -v redis-server >/dev/null; then
  echo "installing redis-server (Debian package)" >&2
  if [ "$(id -u)" = 0 ]; then apt-get install -y redis-server >/dev/null; else sudo apt-get install -y redis-server >/dev/null; fi
fi
cargo build --release --locked --bins >&2
ADMIN=${CARGO_TARGET_DIR:-target}/release/keydb-admin
NODE=${CARGO_TARGET_DIR:-target}/release/keydb-node

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rss() { awk '/^VmRSS/ {printf "%.0f\n", $2 * 1024}' "/proc/$1/status"; }

tmp=$(mktemp -d -t keydb-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT

kport=$(free_port); rport=$(free_port)
KEYDB_PORT=$kport KEYDB_BIND=127.0.0.1 KEYDB_NODE_ADDRESSES=127.0.0.1:$kport \
  KEYDB_DATA_DIR="$tmp/keydb-data" KEYDB_STORAGE_PATH="$tmp/keydb-objects" RUST_LOG=warn \
  "$NODE" > "$tmp/keydb.log" 2>&1 &
kpid=$!; pids+=("$kpid")
redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no > "$tmp/redis.log" 2>&1 &
rpid=$!; pids+=("$rpid")
for _ in $(seq 300); do
  curl -sf "http://127.0.0.1:$kport/readyz" >/dev/null && redis-cli -p "$rport" ping >/dev/null 2>&1 && break
  sleep 0.1
done

common=(--keys "$KEYS" --batch "$BATCH" --concurrency "$CONCURRENCY" --key-len "$KEY_LEN" --key-prefix bench- --ttl 24h --json)
echo "loading $KEYS keys into redis (port $rport) and keydb (port $kport), batches of $BATCH, $CONCURRENCY concurrent" >&2
r0=$(rss "$rpid"); "$ADMIN" bench --redis "127.0.0.1:$rport" "${common[@]}" > "$tmp/redis.json"; r1=$(rss "$rpid")
k0=$(rss "$kpid"); "$ADMIN" --addresses "127.0.0.1:$kport" bench "${common[@]}" > "$tmp/keydb.json"; k1=$(rss "$kpid")
# The dedup call, once memory is measured: half seen keys, half new ones.
"$ADMIN" bench --redis "127.0.0.1:$rport" "${common[@]}" --skip-put --claim > "$tmp/redis-claim.json"
"$ADMIN" --addresses "127.0.0.1:$kport" bench "${common[@]}" --skip-put --claim > "$tmp/keydb-claim.json"

# Snapshot impact: the same reads, idle and while a full snapshot of every key is written.
SNAP_KEYS=$(( KEYS < 2000000 ? KEYS : 2000000 ))
snap=(--keys "$SNAP_KEYS" --batch "$BATCH" --concurrency "$CONCURRENCY" --key-len "$KEY_LEN" --key-prefix bench- --skip-put --json)
"$ADMIN" --addresses "127.0.0.1:$kport" bench "${snap[@]}" > "$tmp/idle.json"
curl -sf -X POST "http://127.0.0.1:$kport/createSnapshots" -H 'Content-Type: application/json' \
  -d '{"full_sync": true}' > "$tmp/snapshot.out" &
spid=$!
"$ADMIN" --addresses "127.0.0.1:$kport" bench "${snap[@]}" > "$tmp/during.json"
wait "$spid" || echo "warning: the snapshot failed" >&2

# Restart: kill -9 the node holding every key, start it on the same disk,
# and time it until /readyz answers 200.
kill -9 "$kpid"; wait "$kpid" 2>/dev/null || true
t0=$(date +%s.%N)
KEYDB_PORT=$kport KEYDB_BIND=127.0.0.1 KEYDB_NODE_ADDRESSES=127.0.0.1:$kport \
  KEYDB_DATA_DIR="$tmp/keydb-data" KEYDB_STORAGE_PATH="$tmp/keydb-objects" RUST_LOG=warn \
  "$NODE" >> "$tmp/keydb.log" 2>&1 &
kpid=$!; pids+=("$kpid")
restart=""
for _ in $(seq 1200); do
  if curl -sf "http://127.0.0.1:$kport/readyz" >/dev/null; then
    restart=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$t0" "$(date +%s.%N)")
    break
  fi
  sleep 0.05
done
[ -n "$restart" ] || { echo "the node did not become ready within 60 s of its restart" >&2; exit 1; }

python3 - "$tmp" "$KEYS" "$r0" "$r1" "$k0" "$k1" "$restart" <<'PY'
import json, sys
tmp, keys = sys.argv[1], int(sys.argv[2])
r0, r1, k0, k1 = map(int, sys.argv[3:7])
restart = float(sys.argv[7])
def phases(name):
    return {p["name"]: p for p in json.load(open(f"{tmp}/{name}.json"))}
redis, keydb = phases("redis"), phases("keydb")
redis["claim"], keydb["claim"] = phases("redis-claim")["claim"], phases("keydb-claim")["claim"]
idle, during = phases("idle")["get"], phases("during")["get"]
rb, kb = (r1 - r0) / keys, (k1 - k0) / keys
print(f"{'':22}{'keydb':>14}{'redis':>14}{'ratio':>10}")
for op in ("put", "get", "claim"):
    k, r = keydb[op]["keys_per_sec"], redis[op]["keys_per_sec"]
    print(f"{op + ' keys/s':22}{k:>14,.0f}{r:>14,.0f}{k / r:>10.2f}")
    print(f"{op + ' p99 per batch (ms)':22}{keydb[op]['batch_p99_ms']:>14.2f}{redis[op]['batch_p99_ms']:>14.2f}")
print(f"{'bytes/key (RSS)':22}{kb:>14.1f}{rb:>14.1f}{kb / rb:>10.2f}")
print(f"keydb get p99 per batch: {idle['batch_p99_ms']:.2f} ms idle, {during['batch_p99_ms']:.2f} ms during a full "
      f"snapshot ({during['batch_p99_ms'] / idle['batch_p99_ms']:.2f}x)")
print(f"keydb restart holding {keys:,} keys and the claims' new ones: {restart:.1f} s from kill -9 to ready")
put_ratio = keydb["put"]["keys_per_sec"] / redis["put"]["keys_per_sec"]
get_ratio = keydb["get"]["keys_per_sec"] / redis["get"]["keys_per_sec"]
claim_ratio = keydb["claim"]["keys_per_sec"] / redis["claim"]["keys_per_sec"]
print(f"RESULT put_ratio={put_ratio:.2f} get_ratio={get_ratio:.2f} claim_ratio={claim_ratio:.2f} "
      f"keydb_bytes_per_key={kb:.1f} redis_bytes_per_key={rb:.1f}")
PY
