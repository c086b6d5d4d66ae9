#!/usr/bin/env bash
# A single-node Garage (S3-compatible server) on 127.0.0.1 for KeyDB's tests.
#
#   scripts/garage.sh install      install Garage 2.5.0 unless it is on PATH
#   scripts/garage.sh start DIR    start one in DIR (config, data, log); writes
#                                  DIR/env with the S3_TEST_* variables.
#                                  Started again on the same DIR, it keeps its
#                                  ports and data.
#   scripts/garage.sh stop DIR     stop the one started in DIR
#
# The access key, secret and bucket are fixed test values; ports are free
# ones picked at start, so several instances can run side by side.
set -euo pipefail

GARAGE_VERSION=2.5.0
KEY_ID=GK0123456789abcdef01234567
SECRET=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef
BUCKET=keydb-test

export PATH="$HOME/.cargo/bin:$PATH"

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

install() {
  if command -v garage >/dev/null && garage --version 2>/dev/null | grep -q "$GARAGE_VERSION"; then
    return
  fi
  echo "installing garage $GARAGE_VERSION (cargo install, takes a while once)" >&2
  cargo install --locked "garage@$GARAGE_VERSION"
}

start() {
  local dir=$1
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local s3 rpc admin
  if [ -f "$dir/ports" ]; then
    read -r s3 rpc admin < "$dir/ports"
  else
    s3=$(free_port); rpc=$(free_port); admin=$(free_port)
    echo "$s3 $rpc $admin" > "$dir/ports"
  fi
  cat > "$dir/garage.toml" <<TOML
metadata_dir = "$dir/meta"
data_dir = "$dir/data"
db_engine = "sqlite"
replication_factor = 1
rpc_bind_addr = "127.0.0.1:$rpc"
rpc_public_addr = "127.0.0.1:$rpc"
rpc_secret = "$(printf '%064d' 0 | tr 0 7)"

[s3_api]
s3_region = "us-east-1"
api_bind_addr = "127.0.0.1:$s3"
root_domain = ".s3.garage.localhost"

[admin]
api_bind_addr = "127.0.0.1:$admin"
TOML
  GARAGE_DEFAULT_ACCESS_KEY=$KEY_ID GARAGE_DEFAULT_SECRET_KEY=$SECRET GARAGE_DEFAULT_BUCKET=$BUCKET \
    RUST_LOG=warn nohup garage -c "$dir/garage.toml" server --single-node --default-bucket \
    >> "$dir/garage.log" 2>&1 &
  echo $! > "$dir/garage.pid"
  # Up once the bucket exists and answers S3 requests.
  local deadline=$((SECONDS + 60))
  until garage -c "$dir/garage.toml" bucket info "$BUCKET" >/dev/null 2>&1 \
    && curl -s -o /dev/null "http://127.0.0.1:$s3/"; do
    if ! kill -0 "$(cat "$dir/garage.pid")" 2>/dev/null; then
      echo "garage exited while starting:" >&2; cat "$dir/garage.log" >&2; exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "garage did not come up within 60 s:" >&2; cat "$dir/garage.log" >&2; exit 1
    fi
    sleep 0.2
  done
  cat > "$dir/env" <<ENV
S3_TEST_ENDPOINT=http://127.0.0.1:$s3
S3_TEST_BUCKET=$BUCKET
S3_TEST_ACCESS_KEY_ID=$KEY_ID
S3_TEST_SECRET_ACCESS_KEY=$SECRET
ENV
  echo "garage up on 127.0.0.1:$s3 ($dir)" >&2
}

stop() {
  stop_pidfile "$1/garage.pid"
}

case "${1:-}" in
  install) install ;;
  start) start "${2:?usage: garage.sh start DIR}" ;;
  stop) stop "${2:?usage: garage.sh stop DIR}" ;;
  *) echo "usage: garage.sh install | start DIR | stop DIR" >&2; exit 2 ;;
esac
