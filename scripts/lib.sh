# Shared by the scripts that start test servers (garage.sh, moto.sh).

free_port() {
  # Below the ephemeral range, so that no outgoing connection takes it first.
  python3 -c 'import random, socket
while True:
    p = random.randrange(15000, 20000)
    try:
        socket.socket().bind(("127.0.0.1", p)); print(p); break
    except OSError:
        pass'
}

# stop_pidfile FILE: stops the process FILE names (TERM, then KILL after
# 10 s) and removes FILE; nothing if FILE is missing.
stop_pidfile() {
  local file=$1
  [ -f "$file" ] || return 0
  local pid
  pid=$(cat "$file")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$file"
}
