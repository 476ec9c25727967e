#!/usr/bin/env bash
# Run a private PostgreSQL (Debian package binaries) as a plain background process,
# fully contained in RUN_DIR: it listens on 127.0.0.1:PORT only and keeps its unix
# socket in RUN_DIR, so it never touches or collides with a system cluster.
# Tuned for tests (trust auth, fsync off): never use it for real data.
#
#   postgres.sh start  RUN_DIR PORT
#   postgres.sh stop   RUN_DIR
#   postgres.sh status RUN_DIR
#
# RUN_DIR layout: data/ (the cluster), test.conf inside it, postgres.log, initdb.log,
# .s.PGSQL.PORT (the unix socket).
#
# initdb and postgres refuse to run as root: when run as root, they run as the
# `postgres` system user, RUN_DIR is chowned to it, and any ancestor directory that user
# cannot search (e.g. pytest's 0700 /tmp/pytest-of-root) gets o+x (search only, no read).
set -euo pipefail

READY_TIMEOUT=60   # seconds per start attempt
START_RETRIES=2    # extra attempts when the server dies before being ready
STOP_TIMEOUT=30    # seconds for pg_ctl stop -m fast, then SIGQUIT (immediate) and 10 s more
PG_USER=postgres   # system user the server runs as when invoked as root

usage() {
    cat >&2 <<'USAGE'
usage: postgres.sh start  RUN_DIR PORT
       postgres.sh stop   RUN_DIR
       postgres.sh status RUN_DIR
USAGE
    exit 2
}

log() { echo "postgres.sh: $*" >&2; }

now_ms() { date +%s%3N; }

# Newest /usr/lib/postgresql/*/bin, unless PG_BIN is set.
find_pg_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then
        echo "$PG_BIN"
        return 0
    fi
    local newest
    newest="$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -type d -name bin 2>/dev/null | sort -V | tail -n 1)"
    [[ -n "$newest" ]] || { log "no /usr/lib/postgresql/*/bin; run deploy/dev/install-deps.sh"; exit 1; }
    echo "$newest"
}

is_root() { [[ "$(id -u)" == 0 ]]; }

# Run a server-side command (initdb, pg_ctl) as PG_USER when we are root.
as_pg() {
    if is_root; then
        runuser -u "$PG_USER" -- "$@"
    else
        "$@"
    fi
}

# True when PID is a live (non-zombie) postgres process. PID 1 here may not reap
# orphans, so a zombie must count as dead; checking the name guards against pid reuse.
is_postgres_alive() {
    local pid="$1" state comm
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [[ "$comm" == postgres* ]] || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != "Z" && "$state" != "X" ]]
}

# Line N of data/postmaster.pid (1 = pid, 4 = port, 8 = status), empty when absent.
pidfile_line() {
    local pidfile="$1/data/postmaster.pid"
    [[ -f "$pidfile" ]] || return 0
    sed -n "${2}p" "$pidfile" 2>/dev/null | tr -d '[:space:]' || true
}

# As root: let PG_USER reach RUN_DIR by giving search permission (o+x) to every
# ancestor it cannot search yet. Re-checked on every call, because each new pytest
# session resets /tmp/pytest-of-root to 0700.
ensure_reachable() {
    local run_dir="$1" dir="" part
    local -a parts
    is_root || return 0
    runuser -u "$PG_USER" -- test -x "$run_dir" 2>/dev/null && return 0
    IFS=/ read -r -a parts <<<"${run_dir#/}"
    for part in "${parts[@]}"; do
        dir="$dir/$part"
        if ! runuser -u "$PG_USER" -- test -x "$dir" 2>/dev/null; then
            chmod o+x "$dir"
        fi
    done
}

# Escape a string for a single-quoted postgresql.conf value.
conf_str() { printf "'%s'" "${1//\'/\'\'}"; }

write_config() {
    local run_dir="$1" port="$2" tmp
    tmp="$run_dir/data/.test.conf.tmp"
    cat >"$tmp" <<CONF
# Written by deploy/dev/postgres.sh on every start; included from postgresql.conf.
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = $(conf_str "$run_dir")
max_connections = 200
fsync = off
synchronous_commit = off
full_page_writes = off
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
CONF
    mv -f "$tmp" "$run_dir/data/test.conf"
    if is_root; then
        chown "$PG_USER:" "$run_dir/data/test.conf"
    fi
}

init_cluster() {
    local run_dir="$1" pg_bin="$2"
    [[ -f "$run_dir/data/PG_VERSION" ]] && return 0
    rm -rf "$run_dir/data"
    if ! (cd "$run_dir" && as_pg "$pg_bin/initdb" -D "$run_dir/data" -U postgres --auth=trust \
            --encoding=UTF8 --locale=C.UTF-8 --no-sync --no-instructions) \
            >"$run_dir/initdb.log" 2>&1; then
        log "initdb failed; $run_dir/initdb.log:"
        tail -n 25 "$run_dir/initdb.log" >&2 || true
        exit 1
    fi
    echo "include = 'test.conf'" >>"$run_dir/data/postgresql.conf"
}

# Stop the server whose pid file is in RUN_DIR; 0 once it is gone (or was not running).
stop_server() {
    local run_dir="$1" pg_bin="$2" pid deadline
    pid="$(pidfile_line "$run_dir" 1)"
    is_postgres_alive "$pid" || return 0
    ensure_reachable "$run_dir"
    if ! (cd "$run_dir" && as_pg "$pg_bin/pg_ctl" stop -D "$run_dir/data" -m fast -w -t "$STOP_TIMEOUT" \
            >/dev/null 2>&1); then
        kill -INT "$pid" 2>/dev/null || true   # SIGINT = fast shutdown
    fi
    # pg_ctl returns once the pid file is gone; wait for the process itself too, and
    # fall back to signals (root can always send them) if pg_ctl could not do it.
    deadline=$(( $(now_ms) + STOP_TIMEOUT * 1000 ))
    while is_postgres_alive "$pid"; do
        if (( $(now_ms) >= deadline )); then
            log "pid $pid did not stop within ${STOP_TIMEOUT}s, sending SIGQUIT"
            kill -QUIT "$pid" 2>/dev/null || true
            deadline=$(( $(now_ms) + 10000 ))
            while is_postgres_alive "$pid"; do
                if (( $(now_ms) >= deadline )); then
                    log "pid $pid survived SIGQUIT, sending SIGKILL"
                    kill -KILL "$pid" 2>/dev/null || true
                    sleep 0.5
                    is_postgres_alive "$pid" && return 1
                    return 0
                fi
                sleep 0.05
            done
            return 0
        fi
        sleep 0.05
    done
    return 0
}

cmd_start() {
    [[ $# -eq 2 ]] || usage
    local run_dir="$1" port="$2" pg_bin
    [[ "$port" =~ ^[0-9]+$ ]] || { log "port must be a number"; exit 2; }
    pg_bin="$(find_pg_bin)"
    [[ -x "$pg_bin/postgres" ]] || { log "$pg_bin/postgres not found; run deploy/dev/install-deps.sh"; exit 1; }
    if is_root; then
        id -u "$PG_USER" >/dev/null 2>&1 || { log "running as root needs a '$PG_USER' system user"; exit 1; }
    fi

    mkdir -p "$run_dir"
    run_dir="$(cd "$run_dir" && pwd -P)"
    if is_root; then
        chown -R "$PG_USER:" "$run_dir"
    fi
    ensure_reachable "$run_dir"

    local pid
    pid="$(pidfile_line "$run_dir" 1)"
    if is_postgres_alive "$pid"; then
        if [[ "$(pidfile_line "$run_dir" 4)" == "$port" ]] &&
            "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 2; then
            echo "postgres.sh: already running (pid $pid, postgresql://postgres@127.0.0.1:$port)"
            return 0
        fi
        log "pid $pid is alive but does not answer on port $port; restarting it"
        stop_server "$run_dir" "$pg_bin"
    fi

    local t0 attempt rc=1 t_attempt
    t0=$(now_ms)
    init_cluster "$run_dir" "$pg_bin"
    write_config "$run_dir" "$port"
    for (( attempt = 0; attempt <= START_RETRIES; attempt++ )); do
        if (( attempt > 0 )); then
            log "attempt $attempt exited before being ready; retrying"
            sleep 1
        fi
        ensure_reachable "$run_dir"
        t_attempt=$(now_ms)
        # pg_ctl -w waits until this very postmaster reports "ready" in its pid file
        # (so an unrelated server on the port cannot fool it); pg_isready then proves
        # that TCP on 127.0.0.1 answers.
        rc=0
        (cd "$run_dir" && as_pg "$pg_bin/pg_ctl" start -D "$run_dir/data" -l "$run_dir/postgres.log" \
            -w -t "$READY_TIMEOUT" >/dev/null 2>&1) || rc=$?
        if (( rc == 0 )) && "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$port" -t 5; then
            echo "postgres.sh: started pid $(pidfile_line "$run_dir" 1) on" \
                "postgresql://postgres@127.0.0.1:$port in $(( $(now_ms) - t0 )) ms, attempt $((attempt + 1))"
            return 0
        fi
        # Timed out (or alive but not answering): stop what is left, do not retry.
        if (( rc == 0 || $(now_ms) - t_attempt >= READY_TIMEOUT * 1000 )); then
            stop_server "$run_dir" "$pg_bin" || true
            break
        fi
    done
    log "failed to start PostgreSQL on port $port; last lines of $run_dir/postgres.log:"
    tail -n 25 "$run_dir/postgres.log" >&2 2>/dev/null || true
    exit 1
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local run_dir="$1" pid t0 pg_bin
    pid="$(pidfile_line "$run_dir" 1)"
    if [[ -z "$pid" ]]; then
        echo "postgres.sh: not running"
        return 0
    fi
    if ! is_postgres_alive "$pid"; then
        echo "postgres.sh: not running (stale pid file)"
        return 0
    fi
    pg_bin="$(find_pg_bin)"
    run_dir="$(cd "$run_dir" && pwd -P)"
    t0=$(now_ms)
    if ! stop_server "$run_dir" "$pg_bin"; then
        exit 1
    fi
    echo "postgres.sh: stopped pid $pid in $(( $(now_ms) - t0 )) ms"
}

cmd_status() {
    [[ $# -eq 1 ]] || usage
    local pid
    pid="$(pidfile_line "$1" 1)"
    if is_postgres_alive "$pid"; then
        echo "postgres.sh: running (pid $pid, port $(pidfile_line "$1" 4))"
        return 0
    fi
    echo "postgres.sh: not running"
    return 1
}

[[ $# -ge 1 ]] || usage
sub="$1"
shift
case "$sub" in
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    *) usage ;;
esac
