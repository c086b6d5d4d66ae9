#!/usr/bin/env bash
# How one node's costs grow with its keys: load N keys (and, for the
# comparison, N/10 on a second node in the same run), then measure memory
# per key (RSS, and the range tables' own bytes), put and get keys/s, the
# put latency once loaded (the first 10 M keys put again: the same work
# without the tables growing), a full snapshot to the folder store, a
# restart from `kill -9` with local checkpoints in play, and a restore onto
# an empty disk from the folder store. Binaries come from
# $CARGO_TARGET_DIR (default ./target).
#
#   scripts/bench-scale.sh [--keys N] [--batch B] [--concurrency C]
#
# The last line is:
#   RESULT keys=<N> bytes_per_key=<b> table_bytes_per_key=<b> put_vs_tenth=<ratio> get_vs_tenth=<ratio>
#          put_p999_load_vs_loaded=<ratio> restart_s=<s> restore_s=<s> snapshot_s=<s>
#          snapshot_after_load_s=<s>   (one line)
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=100000000 BATCH=1000 CONCURRENCY=8
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS=$2; shift 2 ;;
    --batch) BATCH=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    *) echo "usage: $0 [--keys N] [--batch B] [--concurrency C]" >&2; exit 2 ;;
  esac
done

cargo build --release --locked --bins >&2
ADMIN=${CARGO_TARGET_DIR:-target}/release/keydb-admin
NODE=${CARGO_TARGET_DIR:-target}/release/keydb-node
. scripts/lib.sh

tmp=$(mktemp -d -t keydb-bench-scale.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$tmp"; }
trap cleanup EXIT
rss() { awk '/^VmRSS/ {printf "%.0f\n", $2 * 1024}' "/proc/$1/status"; }
now() { date +%s.%N; }
since() { python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$1" "$(now)"; }

# A node whose WAL is cut by a checkpoint every 64 MiB, so that a restart
# meets checkpoints (as any node past a few million keys written does).
# Sets $pid (not in a subshell: the script must be its parent to wait on it).
start_node() { # name port
  env KEYDB_PORT="$2" KEYDB_NODE_ADDRESSES="127.0.0.1:$2" KEYDB_DATA_DIR="$tmp/$1-data" \
    KEYDB_STORAGE_PATH="$tmp/$1-objects" KEYDB_SNAPSHOT_INTERVAL=0s \
    KEYDB_WAL_CHECKPOINT_BYTES=67108864 RUST_LOG=warn "$NODE" >> "$tmp/$1.log" 2>&1 &
  pid=$!
  pids+=("$pid")
}
# Stops $pid with a signal and waits until it is gone (its port is free).
stop_node() { # signal
  kill "$1" "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
wait_ready() { # port [seconds]
  for _ in $(seq $(( ${2:-600} * 20 ))); do
    curl -sf "http://127.0.0.1:$1/readyz" >/dev/null && return 0
    kill -0 "$pid" 2>/dev/null || { echo "the node exited; its log:" >&2; tail -5 "$tmp"/*.log >&2; return 1; }
    sleep 0.05
  done
  echo "node on port $1 not ready in time" >&2; return 1
}

common=(--batch "$BATCH" --concurrency "$CONCURRENCY" --ttl 24h --json)
tenth=$(( KEYS / 10 ))
sport=$(free_port)
start_node small "$sport"; wait_ready "$sport"
echo "loading $tenth keys (a tenth) for the comparison" >&2
"$ADMIN" --addresses "127.0.0.1:$sport" bench --keys "$tenth" --key-prefix s- "${common[@]}" > "$tmp/small.json"
stop_node -TERM

port=$(free_port)
start_node big "$port"; wait_ready "$port"
r0=$(rss "$pid")
echo "loading $KEYS keys" >&2
"$ADMIN" --addresses "127.0.0.1:$port" bench --keys "$KEYS" --key-prefix b- "${common[@]}" > "$tmp/big.json"
r1=$(rss "$pid")
table=$(curl -sf "http://127.0.0.1:$port/metrics" | awk '/^keydb_table_bytes / {printf "%.0f\n", $2}')
echo "once loaded: the first $(( KEYS < 10000000 ? KEYS : 10000000 )) keys put again" >&2
"$ADMIN" --addresses "127.0.0.1:$port" bench --keys "$(( KEYS < 10000000 ? KEYS : 10000000 ))" \
  --key-prefix b- "${common[@]}" > "$tmp/loaded.json"

# Asked for right after the load, a snapshot first waits for the local
# checkpoints the load's WAL called for (each writes every range whole);
# the second one is the snapshot alone.
full_snapshot() {
  t0=$(now)
  curl -sf -X POST "http://127.0.0.1:$port/createSnapshots" -H 'Content-Type: application/json' \
    -d '{"full_sync": true}' > /dev/null
  since "$t0"
}
echo "full snapshot to the folder store, right after the load, then again" >&2
snapshot_first=$(full_snapshot)
snapshot=$(full_snapshot)
echo "  snapshot: $snapshot_first s, then $snapshot s" >&2

echo "kill -9 and restart on the same disk" >&2
stop_node -9
t0=$(now); start_node big "$port"; wait_ready "$port" 1800; restart=$(since "$t0")
echo "  restart: $restart s" >&2
ckpts=$(find "$tmp/big-data" -name '*.seg' -o -name '*.ckpt' 2>/dev/null | wc -l)

echo "kill -9, empty disk, restore from the folder store" >&2
stop_node -9
rm -rf "$tmp/big-data"
t0=$(now); start_node big "$port"; wait_ready "$port" 1800; restore=$(since "$t0")
echo "  restore: $restore s" >&2
"$ADMIN" --addresses "127.0.0.1:$port" bench --keys "$(( KEYS < 1000000 ? KEYS : 1000000 ))" \
  --key-prefix b- --skip-put --hit-ratio 1 "${common[@]}" > "$tmp/after.json"

python3 - "$tmp" "$KEYS" "$r0" "$r1" "$snapshot" "$restart" "$restore" "$ckpts" "$table" "$snapshot_first" <<'PY'
import json, sys
tmp, keys, r0, r1 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
snapshot, restart, restore, ckpts = float(sys.argv[5]), float(sys.argv[6]), float(sys.argv[7]), sys.argv[8]
table, snapshot_first = int(sys.argv[9]), float(sys.argv[10])
def phases(name):
    return {p["name"]: p for p in json.load(open(f"{tmp}/{name}.json"))}
big, small, loaded = phases("big"), phases("small"), phases("loaded")
bpk = (r1 - r0) / keys
print(f"{'':16}{'N/10 keys':>14}{'N keys':>14}{'ratio':>8}")
for op in ("put", "get"):
    s, b = small[op]["keys_per_sec"], big[op]["keys_per_sec"]
    print(f"{op + ' keys/s':16}{s:>14,.0f}{b:>14,.0f}{b / s:>8.2f}")
    print(f"{op + ' p99/p99.9 ms':16}{small[op]['batch_p99_ms']:>7.1f}/{small[op]['batch_p999_ms']:<6.1f}"
          f"{big[op]['batch_p99_ms']:>7.1f}/{big[op]['batch_p999_ms']:<6.1f}")
load_p999, loaded_p999 = big["put"]["batch_p999_ms"], loaded["put"]["batch_p999_ms"]
print(f"put p99/p99.9 once loaded: {loaded['put']['batch_p99_ms']:.1f}/{loaded_p999:.1f} ms "
      f"(during the load / once loaded: {load_p999 / loaded_p999:.2f})")
print(f"memory: {bpk:.1f} bytes per key (RSS growth over {keys:,} keys), "
      f"{table / keys:.1f} in the range tables (keydb_table_bytes)")
print(f"full snapshot to the folder store: {snapshot:.1f} s "
      f"({snapshot_first:.1f} s asked for right after the load, behind its local checkpoints)")
print(f"restart from kill -9 with local checkpoints ({ckpts} files): {restart:.1f} s to ready")
print(f"restore onto an empty disk from the folder store: {restore:.1f} s to ready")
put = big["put"]["keys_per_sec"] / small["put"]["keys_per_sec"]
get = big["get"]["keys_per_sec"] / small["get"]["keys_per_sec"]
print(f"RESULT keys={keys} bytes_per_key={bpk:.1f} table_bytes_per_key={table / keys:.1f} "
      f"put_vs_tenth={put:.2f} get_vs_tenth={get:.2f} put_p999_load_vs_loaded={load_p999 / loaded_p999:.2f} "
      f"restart_s={restart:.1f} restore_s={restore:.1f} snapshot_s={snapshot:.1f} "
      f"snapshot_after_load_s={snapshot_first:.1f}")
PY
