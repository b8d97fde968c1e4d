# Source me: starts a throwaway PostgreSQL on 127.0.0.1 (free port) for the scale-out tests and exports
# AUTOPRUNE_TEST_PG_URL; `stop_pg` ends it. initdb refuses to run as root, so as root we use the postgres user.
start_pg() {
  if ! command -v initdb >/dev/null 2>&1; then
    local bin; bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n 1)
    if [ -z "$bin" ] && [ "$(id -u)" = 0 ]; then
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null 2>&1 || true
      bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | tail -n 1)
    fi
    [ -n "$bin" ] && PATH="$bin:$PATH"
  fi
  if ! command -v initdb >/dev/null 2>&1; then
    echo "pg.sh: PostgreSQL not available; postgres tests will fail in CI" >&2
    return 0
  fi
  PG_DIR=$(mktemp -d /tmp/autoprune-pg.XXXXXX)
  PG_PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  local as=()
  if [ "$(id -u)" = 0 ]; then chown postgres "$PG_DIR"; as=(runuser -u postgres --); fi
  "${as[@]}" initdb -D "$PG_DIR/data" -A trust -U postgres >/dev/null
  "${as[@]}" pg_ctl -D "$PG_DIR/data" -l "$PG_DIR/log" -w \
    -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $PG_DIR -c max_connections=50 -c fsync=off" start >/dev/null
  "${as[@]}" createdb -h 127.0.0.1 -p "$PG_PORT" -U postgres autoprune
  export AUTOPRUNE_TEST_PG_URL="postgresql+psycopg://postgres@127.0.0.1:$PG_PORT/autoprune"
  PG_AS=("${as[@]}")
  echo "pg.sh: PostgreSQL on 127.0.0.1:$PG_PORT" >&2
}

stop_pg() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
    "${PG_AS[@]}" pg_ctl -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}
