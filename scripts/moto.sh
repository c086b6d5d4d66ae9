#!/usr/bin/env bash
# A moto S3 server on 127.0.0.1 for KeyDB's conditional-write tests: unlike
# Garage, it honours If-Match / If-None-Match on PutObject.
#
#   scripts/moto.sh install      pip install "moto[server]" unless it is there
#   scripts/moto.sh start DIR    start one in DIR (log, pid); creates the
#                                bucket and writes DIR/env with MOTO_TEST_*
#   scripts/moto.sh stop DIR     stop the one started in DIR
#
# moto accepts any credentials; the bucket and keys are fixed test values and
# the port is a free one picked at start. The data lives in memory only.
#
# The server handles one request at a time. moto checks a put's condition
# and then stores the object as two steps with no lock between them, so a
# threaded server could let two concurrent conditional puts pass the same
# check (not seen in a few runs of 8-16 writers, but nothing prevents it).
# Real S3 makes the check and the write one step; serving requests in turn
# gives the same guarantee, so a lost update in a test is KeyDB's fault.
set -euo pipefail

BUCKET=keydb-test
KEY_ID=testing
SECRET=testing

# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"

have_moto() {
  python3 -c 'import moto.server, flask, flask_cors, werkzeug' 2>/dev/null
}

install() {
  have_moto && return
  echo "installing moto[server] (pip)" >&2
  python3 -m pip install --quiet --disable-pip-version-check "moto[server]>=5,<6" >&2
}

start() {
  local dir=$1
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  local port
  port=$(free_port)
  # moto.server's own entry point serves threaded; this is the same app
  # served one request at a time (see the header).
  nohup python3 -c '
import sys
from werkzeug.serving import run_simple
from moto.moto_server.werkzeug_app import DomainDispatcherApplication, create_backend_app
run_simple("127.0.0.1", int(sys.argv[1]), DomainDispatcherApplication(create_backend_app), threaded=False)
' "$port" >> "$dir/moto.log" 2>&1 &
  echo $! > "$dir/moto.pid"
  local deadline=$((SECONDS + 60))
  until curl -s -o /dev/null "http://127.0.0.1:$port/"; do
    if ! kill -0 "$(cat "$dir/moto.pid")" 2>/dev/null; then
      echo "moto exited while starting:" >&2; cat "$dir/moto.log" >&2; exit 1
    fi
    if [ $SECONDS -ge $deadline ]; then
      echo "moto did not come up within 60 s:" >&2; cat "$dir/moto.log" >&2; exit 1
    fi
    sleep 0.2
  done
  # An unsigned path-style PUT creates the bucket (moto checks no signature).
  curl -sf -o /dev/null -X PUT "http://127.0.0.1:$port/$BUCKET" \
    || { echo "moto: could not create bucket $BUCKET:" >&2; cat "$dir/moto.log" >&2; exit 1; }
  cat > "$dir/env" <<ENV
MOTO_TEST_ENDPOINT=http://127.0.0.1:$port
MOTO_TEST_BUCKET=$BUCKET
MOTO_TEST_ACCESS_KEY_ID=$KEY_ID
MOTO_TEST_SECRET_ACCESS_KEY=$SECRET
ENV
  echo "moto up on 127.0.0.1:$port ($dir)" >&2
}

stop() {
  stop_pidfile "$1/moto.pid"
}

case "${1:-}" in
  install) install ;;
  start) start "${2:?usage: moto.sh start DIR}" ;;
  stop) stop "${2:?usage: moto.sh stop DIR}" ;;
  *) echo "usage: moto.sh install | start DIR | stop DIR" >&2; exit 2 ;;
esac
