#!/usr/bin/env bash
# What a reshard costs clients: load N keys on 3 nodes through the client
# (`keydb-admin bench`, whose put and get rates are the top rates), then keep
# a writer and a reader at a share of those rates with the measuring load
# (`keydb-admin load`: one request per hash range, every refusal recorded)
# while `keydb-admin scale` goes 3 -> 4 and 4 -> 3. Prints, per scale: how
# long requests for moving ranges were refused (421, then 503 until the new
# owner serves), put and get rates before and during the scale, each
# phase's time, and where the server spent the refusal window of each moved
# range (from the nodes' logs).
#
#   scripts/bench-reshard.sh [--keys N] [--store fs|s3] [--share F] [--settle S] [--write-ttl S]
#
# --store s3 starts a Garage (scripts/garage.sh; installed if missing).
# --share: the fraction of the top rates the load keeps (default 0.5).
# --settle: seconds of steady load measured before each scale (default 8).
# --write-ttl: seconds the writer's keys live (default 10), so that the data
# set stays near N plus what the writer puts in that time. Binaries come
# from ${CARGO_TARGET_DIR:-target}/release. One line per scale is:
#   RESULT scale=<a>to<b> store=<fs|s3> keys=<N> stored=<keys at its start> moved=<ranges>
#     max_refused_ms=<ms> p99_refused_ms=<ms> refused_requests=<n> put_ratio=<during/before>
#     get_ratio=<during/before> put_min_1s_ratio=<r> get_min_1s_ratio=<r> snapshot_s=<s> prepare_s=<s>
#     switch_s=<s> handoff_s=<s> load_s=<s> complete_s=<s> total_s=<s>
# (on one line). KEEP=1 keeps the node logs and reports (the folder is printed).
set -euo pipefail
cd "$(dirname "$0")/.."

KEYS=10000000 STORE=fs SHARE=0.5 SETTLE=8 WRITE_TTL=10
while [ $# -gt 0 ]; do
  case "$1" in
    --keys) KEYS=$2; shift 2 ;;
    --store) STORE=$2; shift 2 ;;
    --share) SHARE=$2; shift 2 ;;
    --settle) SETTLE=$2; shift 2 ;;
    --write-ttl) WRITE_TTL=$2; shift 2 ;;
    *) echo "usage: $0 [--keys N] [--store fs|s3] [--share F] [--settle S] [--write-ttl S]" >&2; exit 2 ;;
  esac
done
case "$STORE" in fs|s3) ;; *) echo "--store must be fs or s3" >&2; exit 2 ;; esac

# BENCH_BIN: a folder holding other builds of the binaries (to compare two).
if [ -z "${BENCH_BIN:-}" ]; then cargo build --release --locked --bins >&2; fi
BIN=${BENCH_BIN:-${CARGO_TARGET_DIR:-target}/release}
ADMIN=$BIN/keydb-admin
NODE=$BIN/keydb-node
. scripts/lib.sh

tmp=$(mktemp -d -t keydb-bench-reshard.XXXXXX)
# WAL, checkpoints and segments of N keys and of the writer: a few GB.
free_kb=$(df -Pk "$tmp" | awk 'NR == 2 {print $4}')
if [ "$free_kb" -lt $(( 8 * 1024 * 1024 )) ]; then
  echo "less than 8 GB free under $tmp: not starting" >&2; rmdir "$tmp"; exit 1
fi
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ "$STORE" = s3 ] && scripts/garage.sh stop "$tmp/garage" || true
  if [ "${KEEP:-0}" = 1 ]; then echo "logs and reports kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

store_env=()
if [ "$STORE" = s3 ]; then
  scripts/garage.sh install
  scripts/garage.sh start "$tmp/garage"
  set -a; . "$tmp/garage/env"; set +a
  store_env=(KEYDB_STORAGE_BACKEND=s3 KEYDB_STORAGE_BUCKET="$S3_TEST_BUCKET"
    KEYDB_STORAGE_ENDPOINT="$S3_TEST_ENDPOINT" KEYDB_STORAGE_ACCESSKEYID="$S3_TEST_ACCESS_KEY_ID"
    KEYDB_STORAGE_ACCESSKEY="$S3_TEST_SECRET_ACCESS_KEY" KEYDB_STORAGE_PREFIX="reshard-$$/")
else
  store_env=(KEYDB_STORAGE_BACKEND=fs KEYDB_STORAGE_PATH="$tmp/objects")
fi

ports=(); for _ in 0 1 2 3; do ports+=("$(free_port)"); done
addr() { echo "127.0.0.1:${ports[$1]}"; }
three="$(addr 0),$(addr 1),$(addr 2)"
four="$three,$(addr 3)"
# Node 3 starts with the list of four: it holds nothing until the scale.
start_node() { # id addresses
  env "${store_env[@]}" KEYDB_NODE_ID="$1" KEYDB_PORT="${ports[$1]}" KEYDB_NODE_ADDRESSES="$2" \
    KEYDB_DATA_DIR="$tmp/node-$1" RUST_LOG=info "$NODE" >> "$tmp/node-$1.log" 2>&1 &
  pids+=("$!")
}
wait_ready() { # id
  for _ in $(seq 1200); do
    curl -sf "http://$(addr "$1")/readyz" >/dev/null && return 0
    sleep 0.05
  done
  echo "node $1 not ready in 60 s; its log:" >&2; tail -5 "$tmp/node-$1.log" >&2; return 1
}
for i in 0 1 2; do start_node "$i" "$three"; done
for i in 0 1 2; do wait_ready "$i"; done
start_node 3 "$four"
for _ in $(seq 1200); do curl -sf "http://$(addr 3)/healthz" >/dev/null && break; sleep 0.05; done

echo "loading $KEYS keys on 3 nodes ($STORE store)" >&2
"$ADMIN" --addresses "$(addr 0)" bench --keys "$KEYS" --key-prefix pre- --ttl 24h --json > "$tmp/preload.json"

# The steady load: a share of the rates the preload's client reached (its
# top rates); the writer's keys live --write-ttl, so that the data set stays
# near N plus what the writer puts in that time instead of growing by
# millions of keys a second.
read -r put_rate get_rate < <(python3 - "$tmp" "$SHARE" <<'PY'
import json, sys
tmp, share = sys.argv[1], float(sys.argv[2])
phases = {p["name"]: p for p in json.load(open(f"{tmp}/preload.json"))}
print(int(phases["put"]["keys_per_sec"] * share), int(phases["get"]["keys_per_sec"] * share))
PY
)
echo "  steady load: $put_rate puts/s and $get_rate gets/s ($SHARE of the preload's rates)" >&2
load=("$ADMIN" --addresses "$(addr 0)" load --preloaded-prefix pre- --preloaded-keys "$KEYS" --json)
"${load[@]}" --put-rate "$put_rate" --get-rate "$get_rate" --ttl "${WRITE_TTL}s" > "$tmp/load.json" 2> "$tmp/load.err" &
load_pid=$!; pids+=("$load_pid")
stored() { "$ADMIN" --addresses "$(addr 0)" --json info |
  python3 -c 'import json,sys; print(sum(n["keys_count"] for n in json.load(sys.stdin)))'; }
sleep "$SETTLE"
echo "scale 3 -> 4" >&2
stored > "$tmp/stored-1"
"$ADMIN" --addresses "$(addr 0)" --json scale --timeout 10m --add "$(addr 3)" > "$tmp/scale-1.json" 2> "$tmp/scale-1.err"
sleep "$SETTLE"
echo "scale 4 -> 3" >&2
stored > "$tmp/stored-2"
"$ADMIN" --addresses "$(addr 0)" --json scale --timeout 10m --remove 1 > "$tmp/scale-2.json" 2> "$tmp/scale-2.err"
sleep "$SETTLE"
kill -TERM "$load_pid"
load_ok=0; wait "$load_pid" || load_ok=$?
"$ADMIN" --json plan --from 3 --to 4 > "$tmp/plan-1.json"
"$ADMIN" --json plan --from 4 --to 3 > "$tmp/plan-2.json"

python3 - "$tmp" "$STORE" "$KEYS" "$SETTLE" <<'PY'
import datetime, glob, json, re, statistics, sys
tmp, store, keys, settle = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
load = json.load(open(f"{tmp}/load.json"))
bucket = load["bucket_ms"]
t0 = load["started_unix_ms"]

def ts(line):
    stamp = line.split(" ", 1)[0]
    return datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp() * 1000

# Events of the nodes' logs, in Unix ms.
adopt, handed, loaded, serving = {}, {}, {}, {}
for path in glob.glob(f"{tmp}/node-*.log"):
    node = int(re.search(r"node-(\d+)\.log", path).group(1))
    for line in open(path, errors="replace"):
        if " adopting epoch " in line:
            m = re.search(r"adopting epoch (\d+) \((\w+)\)", line)
            if m and m.group(2) == "Scaling":
                adopt[(node, int(m.group(1)))] = ts(line)
        elif ": handed off for epoch " in line:
            m = re.search(r"range (\d+): handed off for epoch (\d+) \((\d+) entries, (\d+) bytes\): (.*)$", line)
            if m:
                r, e = int(m.group(1)), int(m.group(2))
                steps = {k.strip(): int(v) for k, v in re.findall(r"([a-z ]+?) by (\d+) ms", m.group(5))}
                handed[(r, e)] = dict(at=ts(line), entries=int(m.group(3)), bytes=int(m.group(4)), steps=steps,
                                      took=steps.get("manifest written", 0))
        elif " segments loaded in " in line:
            m = re.search(r"range (\d+): (\d+) segments loaded in (\d+) ms for epoch (\d+)(?: \(\d+ loaded ahead\))?: "
                          r"(\d+) entries merged by (\d+) ms, handoff mark found after (\d+) polls by the pass at "
                          r"(\d+) ms, (\d+) more entries merged by (\d+) ms", line)
            if m:
                g = [int(x) for x in m.groups()]
                loaded[(g[0], g[3])] = dict(at=ts(line), took=g[2], bulk=g[4], bulk_ms=g[5], polls=g[6],
                                            mark_pass=g[7], tail=g[8], tail_ms=g[9])
        elif re.search(r"range \d+ loaded: now Serving", line):
            r = int(re.search(r"range (\d+) loaded", line).group(1))
            serving.setdefault((node, r), []).append(ts(line))

def rate(lo, hi, field):
    """Keys per second served by the load in [lo, hi) (Unix ms)."""
    a, b = int((lo - t0) // bucket), int((hi - t0) // bucket)
    got = sum(x[field] for x in load["timeline"][max(a, 0):b])
    return got / max((hi - lo) / 1000, 1e-9)

def lowest_second(lo, hi, field):
    """The fewest keys served in one of the seconds from lo on that cover [lo, hi)."""
    per = max(int(1000 // bucket), 1)
    a, b = max(int((lo - t0) // bucket), 0), int((hi - t0) // bucket)
    rows = load["timeline"]
    secs = [sum(x[field] for x in rows[i:i + per]) * 1000 / (per * bucket) for i in range(a, max(b, a + 1), per)]
    return min(secs) if secs else 0.0

def q(xs, p):
    xs = sorted(xs)
    return xs[min(int(len(xs) * p), len(xs) - 1)] if xs else 0.0

summary = []
previous_end = t0
for n, (a, b) in enumerate([(3, 4), (4, 3)], start=1):
    scale = json.load(open(f"{tmp}/scale-{n}.json"))
    u = scale["unix_ms"]
    epoch = scale["epoch"]
    moves = json.load(open(f"{tmp}/plan-{n}.json"))["moves"]
    stored = int(open(f"{tmp}/stored-{n}").read().strip() or 0)
    lo, hi = u["started"], u["completed"]
    before_lo = max(previous_end, lo - settle * 1000)
    previous_end = hi
    refusals = [r for r in load["refusals"] if lo <= r["first_unix_ms"] <= hi + 1000]
    refused = [r["refused_ms"] for r in refusals if r["refused_ms"] is not None]
    unserved = [r for r in refusals if r["refused_ms"] is None]
    put_b, put_d = rate(before_lo, lo, "put_keys"), rate(lo, hi, "put_keys")
    get_b, get_d = rate(before_lo, lo, "get_keys"), rate(lo, hi, "get_keys")
    put_min, get_min = lowest_second(lo, hi, "put_keys"), lowest_second(lo, hi, "get_keys")
    print(f"\n== scale {a} -> {b} ({store} store, {keys:,} keys preloaded, {stored:,} stored at its start): "
          f"{len(moves)} ranges moved")
    prepare_s = scale.get("prepare_seconds", 0.0)
    switch_start = u.get("prepared", u["snapshotted"])
    print(f"phases: snapshots {scale['snapshot_seconds']:.2f} s, load ahead {prepare_s:.2f} s, switch "
          f"{scale['switch_seconds']:.2f} s, handoff and load {scale['move_seconds'] - scale['switch_seconds']:.2f} s, "
          f"complete {scale['complete_seconds']:.2f} s; total {scale['total_seconds']:.2f} s")
    # Per moved range, from the logs: the old owner refuses (421) from its
    # adoption, the new owner (503) until it serves.
    rows = []
    for m in moves:
        r, old, new = m["range"], m["from"], m["to"]
        h, l = handed.get((r, epoch)), loaded.get((r, epoch))
        a_old, a_new = adopt.get((old, epoch)), adopt.get((new, epoch))
        s = [t for t in serving.get((new, r), []) if a_new and t >= a_new]
        if None in (h, l, a_old, a_new) or not s:
            continue
        s = s[0]
        st = h["steps"]
        rows.append(dict(range=r, window=s - a_old, propagate=a_new - a_old, handoff=h["at"] - a_old,
                         handoff_queued=h["at"] - a_old - h["took"], handoff_took=h["took"],
                         handoff_lock=st.get("lock taken", 0),
                         handoff_take=st.get("entries taken", 0) - st.get("lock taken", 0),
                         handoff_read=st.get("manifest read", 0) - st.get("entries taken", 0),
                         handoff_encode=st.get("encoded", 0) - st.get("manifest read", 0),
                         handoff_segment=st.get("segment written", 0) - st.get("encoded", 0),
                         handoff_manifest=st.get("manifest written", 0) - st.get("segment written", 0),
                         handoff_entries=h["entries"],
                         bulk=l["bulk_ms"], bulk_entries=l["bulk"], mark_wait=(a_new + l["mark_pass"]) - h["at"],
                         polls=l["polls"], tail=l["tail_ms"] - l["mark_pass"], tail_entries=l["tail"],
                         mark_write=l["took"] - l["tail_ms"], after=s - l["at"]))
    if rows:
        def line(name, key, unit="ms"):
            xs = [x[key] for x in rows]
            print(f"  {name:<58} median {statistics.median(xs):>9.0f} {unit:<7} max {max(xs):>9.0f} {unit}")
        print(f"where the window goes, per moved range ({len(rows)} of {len(moves)} found in the logs):")
        line("server window: old owner adopts -> new owner serves", "window")
        line("  new owner adopts the view after the old owner", "propagate")
        line("  handoff mark written, after the old owner adopted", "handoff")
        line("    waiting for the snapshot actor to take the handoff", "handoff_queued")
        line("    handoff task, start to end", "handoff_took")
        line("      waiting for the range's snapshot lock", "handoff_lock")
        line("      taking the entries from the range actor", "handoff_take")
        line("      reading the manifest", "handoff_read")
        line("      encoding the segment", "handoff_encode")
        line("      writing the segment", "handoff_segment")
        line("      writing the manifest with the mark", "handoff_manifest")
        line("    entries in the handoff segment", "handoff_entries", "entries")
        line("  new owner merges the chain (bulk), from its adoption", "bulk")
        line("    entries in the chain", "bulk_entries", "entries")
        line("  handoff mark found by the loader, after it was written", "mark_wait")
        line("    polls before it", "polls", "polls")
        line("  tail merged, after the mark was found", "tail")
        line("  load mark written", "mark_write")
        line("  router serves, after the loader's report", "after")
    print(f"clients: {len(refusals)} requests refused at least once ({sum(r['unavailable'] for r in refusals)} "
          f"attempts answered 503, {sum(r['wrong_node'] for r in refusals)} answered 421, "
          f"{sum(r['failed'] for r in refusals)} failed), {len({r['range'] for r in refusals})} ranges, "
          f"{len(unserved)} never served before the load stopped")
    for op in ("put", "get"):
        xs = [r["refused_ms"] for r in refusals if r["op"] == op and r["refused_ms"] is not None]
        if xs:
            print(f"  {op}: longest refused {max(xs):.0f} ms, p50 {q(xs, .5):.0f} ms, p99 {q(xs, .99):.0f} ms "
                  f"({len(xs)} requests)")
    print(f"rates (before: the {(lo - before_lo) / 1000:.1f} s before the scale): put {put_b:,.0f} -> {put_d:,.0f} "
          f"keys/s ({put_d / max(put_b, 1):.2f}, lowest second {put_min / max(put_b, 1):.2f}), get {get_b:,.0f} -> "
          f"{get_d:,.0f} keys/s ({get_d / max(get_b, 1):.2f}, lowest second {get_min / max(get_b, 1):.2f})")
    handoff_s = (max(h["at"] for (r, e), h in handed.items() if e == epoch) - switch_start) / 1000 \
        if any(e == epoch for (_, e) in handed) else 0.0
    served = [t for m in moves for t in serving.get((m["to"], m["range"]), []) if lo <= t <= hi]
    load_s = (max(served) - switch_start) / 1000 if served else 0.0
    summary.append(
        f"RESULT scale={a}to{b} store={store} keys={keys} stored={stored} moved={len(moves)} "
        f"max_refused_ms={max(refused, default=0):.0f} p99_refused_ms={q(refused, .99):.0f} "
        f"refused_requests={len(refusals)} put_ratio={put_d / max(put_b, 1):.2f} get_ratio={get_d / max(get_b, 1):.2f} "
        f"put_min_1s_ratio={put_min / max(put_b, 1):.2f} get_min_1s_ratio={get_min / max(get_b, 1):.2f} "
        f"snapshot_s={scale['snapshot_seconds']:.2f} prepare_s={prepare_s:.2f} switch_s={scale['switch_seconds']:.2f} "
        f"handoff_s={handoff_s:.2f} "
        f"load_s={load_s:.2f} complete_s={scale['complete_seconds']:.2f} total_s={scale['total_seconds']:.2f}")

outside = [r for r in load["refusals"]
           if not any(json.load(open(f"{tmp}/scale-{n}.json"))["unix_ms"]["started"] <= r["first_unix_ms"]
                      <= json.load(open(f"{tmp}/scale-{n}.json"))["unix_ms"]["completed"] + 1000 for n in (1, 2))]
print(f"\nload: {load['put']['keys']:,} puts and {load['get']['keys']:,} gets in {load['seconds']:.1f} s; "
      f"{load['wrong_answers']} wrong answers, {load['rejected']} rejected requests, {len(outside)} requests "
      f"refused outside the scales")
for s in summary:
    print(s)
PY
[ "$load_ok" = 0 ] || { echo "the load reported wrong answers or rejected requests (see above)" >&2; exit 1; }
