#!/usr/bin/env bash
# Throwaway servers for cutover's tests, demo and benchmarks, on 127.0.0.1 only:
#   a PostgreSQL cluster and a one-member mongod replica set (rs0), data under one directory.
#
#   scripts/services.sh start   start both (a second start reuses the running pair)
#   scripts/services.sh env     print `export` lines for a shell to eval
#   scripts/services.sh stop    stop exactly the processes this script started, by PID
#   scripts/services.sh status  say what is running
#
# mongod runs with enableTestCommands=1 so tests can inject faults (failCommand fail points).
# The Appwrite stand-in (the workspace package tests/appwrite-standin: `cargo build -p
# appwrite-standin`, binary target/<profile>/appwrite-standin, under $CARGO_TARGET_DIR when set)
# starts too when it is built; its throwaway API key is generated into the services directory.
# Settings (environment): CUTOVER_SERVICES_DIR (default /tmp/cutover-services),
# CUTOVER_PG_PORT (default 55432), CUTOVER_MONGO_PORT (default 57017), CUTOVER_APPWRITE_PORT
# (default 58080).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
DIR="${CUTOVER_SERVICES_DIR:-/tmp/cutover-services}"
PG_PORT="${CUTOVER_PG_PORT:-55432}"
MONGO_PORT="${CUTOVER_MONGO_PORT:-57017}"
APPWRITE_PORT="${CUTOVER_APPWRITE_PORT:-58080}"
ROOT="$(dirname "$HERE")"
CACHE_DIR="${CUTOVER_CACHE_DIR:-$HOME/.cache/cutover}"
MONGOD="${CUTOVER_MONGOD:-$CACHE_DIR/mongod/mongod}"

log() { printf 'services: %s\n' "$*" >&2; }

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
  done
  return 1
}

# Run a PostgreSQL tool as the data directory's owner (initdb refuses root).
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# Waits (up to 10 s) until 127.0.0.1:PORT can be listened on, as the servers bind it: a port of
# the ephemeral range may be held for a moment as the local end of some connection. Stops with
# the setting to change when it stays taken (another server on it).
wait_port_free() {
  local port="$1" name="$2" setting="$3"
  for _ in $(seq 1 50); do
    python3 - "$port" 2>/dev/null <<'PY' && return 0
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1])))
s.listen(1)
PY
    sleep 0.2
  done
  log "port $port for $name is in use on 127.0.0.1 (another server?): choose another with $setting"
  exit 1
}

pg_pid() { [ -f "$DIR/pg/data/postmaster.pid" ] && head -1 "$DIR/pg/data/postmaster.pid" || true; }
mongo_pid() { [ -f "$DIR/mongo/mongod.pid" ] && cat "$DIR/mongo/mongod.pid" || true; }
standin_pid() { [ -f "$DIR/appwrite/standin.pid" ] && cat "$DIR/appwrite/standin.pid" || true; }

# The newest build of the stand-in (release or debug), so a stale one is never started.
standin_bin() {
  local target="${CARGO_TARGET_DIR:-$ROOT/target}" b best=""
  for b in "$target/release/appwrite-standin" "$target/debug/appwrite-standin"; do
    [ -x "$b" ] || continue
    if [ -z "$best" ] || [ "$b" -nt "$best" ]; then best="$b"; fi
  done
  [ -n "$best" ] && echo "$best"
}

start_standin() {
  if alive "$(standin_pid)"; then
    log "appwrite stand-in already running (pid $(standin_pid), port $APPWRITE_PORT)"
    return
  fi
  local bin
  if ! bin="$(standin_bin)"; then
    log "appwrite stand-in not built (cargo build -p appwrite-standin); skipped"
    return
  fi
  wait_port_free "$APPWRITE_PORT" "the appwrite stand-in" CUTOVER_APPWRITE_PORT
  mkdir -p "$DIR/appwrite"
  [ -f "$DIR/appwrite/key" ] || head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$DIR/appwrite/key"
  APPWRITE_API_KEY="$(cat "$DIR/appwrite/key")" nohup "$bin" --listen "127.0.0.1:$APPWRITE_PORT" --project cutover \
    >"$DIR/appwrite/standin.log" 2>&1 &
  echo $! >"$DIR/appwrite/standin.pid"
  for _ in $(seq 1 100); do
    grep -q "listening on" "$DIR/appwrite/standin.log" 2>/dev/null && break
    sleep 0.05
  done
  log "appwrite stand-in started (pid $(standin_pid), port $APPWRITE_PORT)"
}

stop_standin() {
  local pid; pid="$(standin_pid)"
  if alive "$pid"; then
    kill -TERM "$pid"
    for _ in $(seq 1 100); do alive "$pid" || break; sleep 0.05; done
    alive "$pid" && kill -KILL "$pid"
    log "appwrite stand-in stopped (pid $pid)"
  fi
  rm -f "$DIR/appwrite/standin.pid"
}

start_pg() {
  if alive "$(pg_pid)"; then
    log "postgresql already running (pid $(pg_pid), port $PG_PORT)"
    return
  fi
  local bin; bin="$(pg_bindir)" || { log "postgresql not installed: run scripts/setup.sh"; exit 1; }
  mkdir -p "$DIR/pg"
  if [ "$(id -u)" -eq 0 ]; then
    # The postgres user must be able to reach its directory (mktemp makes 0700 directories).
    chmod 755 "$DIR"
    chown postgres:postgres "$DIR/pg"
    chmod 700 "$DIR/pg"
  fi
  if [ ! -f "$DIR/pg/data/PG_VERSION" ]; then
    as_pg "$bin/initdb" -D "$DIR/pg/data" -U postgres --auth=trust -E UTF8 --no-locale >/dev/null
    cat >>"$DIR/pg/data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$DIR/pg'
fsync = off
synchronous_commit = off
full_page_writes = off
wal_level = minimal
max_wal_senders = 0
max_connections = 200
shared_buffers = 256MB
work_mem = 32MB
maintenance_work_mem = 256MB
CONF
  fi
  wait_port_free "$PG_PORT" postgresql CUTOVER_PG_PORT
  if ! as_pg "$bin/pg_ctl" -D "$DIR/pg/data" -l "$DIR/pg/postgres.log" -w -t 60 start >/dev/null; then
    # Said here: the log goes with a throwaway services directory.
    log "postgresql did not start on port $PG_PORT; the end of its log:"
    tail -n 20 "$DIR/pg/postgres.log" >&2 || true
    exit 1
  fi
  log "postgresql started (pid $(pg_pid), port $PG_PORT)"
}

start_mongo() {
  if alive "$(mongo_pid)"; then
    log "mongod already running (pid $(mongo_pid), port $MONGO_PORT)"
    return
  fi
  [ -x "$MONGOD" ] || { log "mongod not installed: run scripts/setup.sh"; exit 1; }
  mkdir -p "$DIR/mongo/data"
  wait_port_free "$MONGO_PORT" mongod CUTOVER_MONGO_PORT
  "$MONGOD" --bind_ip 127.0.0.1 --port "$MONGO_PORT" --dbpath "$DIR/mongo/data" --replSet rs0 \
    --wiredTigerCacheSizeGB 1 --setParameter enableTestCommands=1 --fork --logpath "$DIR/mongo/mongod.log" \
    --pidfilepath "$DIR/mongo/mongod.pid" >/dev/null
  python3 "$HERE/mongo_admin.py" "$MONGO_PORT" initiate
  log "mongod started (pid $(mongo_pid), port $MONGO_PORT, replica set rs0)"
}

stop_pg() {
  local pid; pid="$(pg_pid)"
  if alive "$pid"; then
    as_pg "$(pg_bindir)/pg_ctl" -D "$DIR/pg/data" -m fast -w stop >/dev/null
    log "postgresql stopped (pid $pid)"
  fi
}

stop_mongo() {
  local pid; pid="$(mongo_pid)"
  if alive "$pid"; then
    kill -TERM "$pid"
    for _ in $(seq 1 300); do alive "$pid" || break; sleep 0.1; done
    if alive "$pid"; then kill -KILL "$pid"; fi
    log "mongod stopped (pid $pid)"
  fi
  rm -f "$DIR/mongo/mongod.pid"
}

print_env() {
  echo "export CUTOVER_SOURCE_URL='postgres://postgres@127.0.0.1:$PG_PORT/postgres'"
  echo "export MONGODB_URI='mongodb://127.0.0.1:$MONGO_PORT/?replicaSet=rs0'"
  echo "export CUTOVER_PG_PORT='$PG_PORT'"
  echo "export CUTOVER_MONGO_PORT='$MONGO_PORT'"
  if [ -f "$DIR/appwrite/key" ]; then
    echo "export APPWRITE_ENDPOINT='http://127.0.0.1:$APPWRITE_PORT/v1'"
    echo "export APPWRITE_PROJECT='cutover'"
    echo "export APPWRITE_API_KEY='$(cat "$DIR/appwrite/key")'"
  fi
}

case "${1:-}" in
  start) start_pg; start_mongo; start_standin ;;
  stop) stop_standin; stop_mongo; stop_pg ;;
  env) print_env ;;
  status)
    alive "$(pg_pid)" && echo "postgresql: running (pid $(pg_pid), port $PG_PORT)" || echo "postgresql: stopped"
    alive "$(mongo_pid)" && echo "mongod: running (pid $(mongo_pid), port $MONGO_PORT)" || echo "mongod: stopped"
    alive "$(standin_pid)" && echo "appwrite stand-in: running (pid $(standin_pid), port $APPWRITE_PORT)" || echo "appwrite stand-in: stopped"
    ;;
  *) echo "usage: $0 start|stop|env|status" >&2; exit 2 ;;
esac
