#!/usr/bin/env bash
# Run a private Orthanc (Debian package binary + DICOMweb + GDCM plugins) as a plain
# background process, fully contained in RUN_DIR. Never touches the system service
# or /etc/orthanc.
#
#   orthanc.sh start  RUN_DIR HTTP_PORT DICOM_PORT [USER:PASSWORD]
#   orthanc.sh stop   RUN_DIR
#   orthanc.sh status RUN_DIR
#
# RUN_DIR layout: cfg/orthanc.json, data/ (storage + index), orthanc.log, orthanc.pid
set -euo pipefail

ORTHANC_BIN="${ORTHANC_BIN:-/usr/sbin/Orthanc}"
PLUGIN_DIR="${ORTHANC_PLUGIN_DIR:-/usr/share/orthanc/plugins}"
READY_TIMEOUT=30   # seconds per start attempt
START_RETRIES=5    # extra attempts when the process dies before being ready
STOP_TIMEOUT=30    # seconds to wait after SIGTERM before SIGKILL
READY_MARKER="Orthanc has started"

usage() {
    cat >&2 <<'USAGE'
usage: orthanc.sh start  RUN_DIR HTTP_PORT DICOM_PORT [USER:PASSWORD]
       orthanc.sh stop   RUN_DIR
       orthanc.sh status RUN_DIR
USAGE
    exit 2
}

log() { echo "orthanc.sh: $*" >&2; }

now_ms() { date +%s%3N; }

# True when PID is a live (non-zombie) Orthanc process. PID 1 here may not reap
# orphans, so a zombie must count as dead; checking the name guards against pid reuse.
is_orthanc_alive() {
    local pid="$1" state comm
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    comm="$(cat "/proc/$pid/comm" 2>/dev/null || true)"
    [[ "$comm" == Orthanc* ]] || return 1
    state="$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || true)"
    [[ -n "$state" && "$state" != "Z" && "$state" != "X" ]]
}

read_pid() {
    local pidfile="$1/orthanc.pid" pid=""
    [[ -f "$pidfile" ]] && read -r pid <"$pidfile" || true
    echo "$pid"
}

# Escape a string for a JSON string literal (rejects control characters).
json_str() {
    local s="$1"
    if [[ "$s" =~ [[:cntrl:]] ]]; then
        log "control characters are not allowed in credentials"
        exit 2
    fi
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    printf '"%s"' "$s"
}

# HTTP status of GET /system (000 when nothing answers). Credentials are fed to curl
# through a config on stdin so they do not show up in `ps`.
http_status() {
    local port="$1" creds="${2:-}" esc
    if [[ -n "$creds" ]]; then
        esc="${creds//\\/\\\\}"
        esc="${esc//\"/\\\"}"
        printf 'user = "%s"\n' "$esc" |
            curl -s -o /dev/null -w '%{http_code}' --max-time 2 -K - \
                "http://127.0.0.1:${port}/system" 2>/dev/null || true
    else
        curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
            "http://127.0.0.1:${port}/system" 2>/dev/null || true
    fi
}

write_config() {
    local run_dir="$1" http_port="$2" dicom_port="$3" creds="$4"
    local auth="false" users="{}" tmp
    if [[ -n "$creds" ]]; then
        auth="true"
        users="{ $(json_str "${creds%%:*}"): $(json_str "${creds#*:}") }"
    fi
    tmp="$(mktemp "$run_dir/cfg/.orthanc.json.XXXXXX")"
    cat >"$tmp" <<JSON
{
  "Name": "ORTHANC",
  "StorageDirectory": $(json_str "$run_dir/data"),
  "IndexDirectory": $(json_str "$run_dir/data"),
  "StorageCompression": false,
  "HttpServerEnabled": true,
  "HttpPort": $http_port,
  "DicomServerEnabled": true,
  "DicomAet": "ORTHANC",
  "DicomPort": $dicom_port,
  "RemoteAccessAllowed": false,
  "AuthenticationEnabled": $auth,
  "RegisteredUsers": $users,
  "HttpCompressionEnabled": false,
  "KeepAlive": true,
  "TcpNoDelay": true,
  "HttpThreadsCount": 50,
  "SaveJobs": false,
  "StableAge": 2,
  "OverwriteInstances": false,
  "ExecuteLuaEnabled": false,
  "Plugins": [
    $(json_str "$PLUGIN_DIR/libOrthancDicomWeb.so"),
    $(json_str "$PLUGIN_DIR/libOrthancGdcm.so")
  ],
  "DicomWeb": { "Enable": true, "Root": "/dicom-web/", "EnableWado": true, "WadoRoot": "/wado", "Ssl": false },
  "BuiltinDecoderTranscoderOrder": "Before"
}
JSON
    chmod 600 "$tmp"
    mv -f "$tmp" "$run_dir/cfg/orthanc.json"
}

# Wait for PID to exit; SIGKILL after STOP_TIMEOUT seconds. Returns 0 once it is gone.
wait_exit() {
    local pid="$1" deadline
    deadline=$(( $(now_ms) + STOP_TIMEOUT * 1000 ))
    while is_orthanc_alive "$pid"; do
        if (( $(now_ms) >= deadline )); then
            log "pid $pid did not exit within ${STOP_TIMEOUT}s, sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            deadline=$(( $(now_ms) + 10000 ))
            while is_orthanc_alive "$pid"; do
                if (( $(now_ms) >= deadline )); then
                    log "pid $pid survived SIGKILL"
                    return 1
                fi
                sleep 0.05
            done
            return 0
        fi
        sleep 0.05
    done
    return 0
}

# Orthanc's SQLite index has no statistics (Orthanc never runs ANALYZE), and without them SQLite answers a lookup
# by UID (/tools/lookup, QIDO-RS by StudyInstanceUID, ...) by scanning every identifier of the level: measured
# 1.8 ms on an empty index, 16-25 ms at 14k instances, growing with the archive. Statistics that say what is true
# of any archive (a UID value names about one resource; a tag names many) make it use the index on values
# (1.2-2 ms at 14k instances). Written once, while Orthanc is stopped (it holds its index locked while it runs).
# Real deployments: run ANALYZE on an index that holds data, or use a database plugin.
plan_uid_lookups() {
    local index="$1/data/index"
    [[ -f "$index" ]] || return 0
    python3 - "$index" <<'PY' || log "could not write the index statistics (lookups by UID will scan)"
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=10, isolation_level=None)
if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat1'").fetchone() is None:
    db.execute("ANALYZE sqlite_master")  # creates sqlite_stat1
if db.execute("SELECT 1 FROM sqlite_stat1 WHERE idx = 'DicomIdentifiersIndexValues'").fetchone() is None:
    db.execute("BEGIN IMMEDIATE")
    db.executemany("INSERT INTO sqlite_stat1 VALUES ('DicomIdentifiers', ?, ?)", [
        ("DicomIdentifiersIndexValues", "1000000 2"),
        ("DicomIdentifiersIndex2", "1000000 125000 125000"),
        ("DicomIdentifiersIndex1", "1000000 8"),
    ])
    db.execute("COMMIT")
PY
}

# One launch: 0 = ready, 1 = process died before being ready, 2 = timed out.
launch_once() {
    local run_dir="$1" http_port="$2" creds="$3"
    local logfile="$run_dir/orthanc.log" offset pid deadline code
    offset=$(stat -c %s "$logfile" 2>/dev/null || echo 0)
    "$ORTHANC_BIN" --logfile="$logfile" "$run_dir/cfg/orthanc.json" </dev/null >/dev/null 2>&1 &
    pid=$!
    echo "$pid" >"$run_dir/orthanc.pid"
    deadline=$(( $(now_ms) + READY_TIMEOUT * 1000 ))
    while true; do
        if ! is_orthanc_alive "$pid"; then
            wait "$pid" 2>/dev/null || true
            rm -f "$run_dir/orthanc.pid"
            return 1
        fi
        code="$(http_status "$http_port" "$creds")"
        # The marker (in this attempt's part of the log) proves that the answer comes
        # from our process and not from a previous instance still holding the port.
        if [[ "$code" == "200" ]] &&
            tail -c +"$((offset + 1))" "$logfile" 2>/dev/null | grep -q "$READY_MARKER"; then
            return 0
        fi
        if (( $(now_ms) >= deadline )); then
            log "not ready after ${READY_TIMEOUT}s (last HTTP status $code), stopping pid $pid"
            kill -TERM "$pid" 2>/dev/null || true
            wait_exit "$pid" || true
            rm -f "$run_dir/orthanc.pid"
            return 2
        fi
        sleep 0.05
    done
}

cmd_start() {
    [[ $# -eq 3 || $# -eq 4 ]] || usage
    local run_dir="$1" http_port="$2" dicom_port="$3" creds="${4:-}"
    [[ "$http_port" =~ ^[0-9]+$ && "$dicom_port" =~ ^[0-9]+$ ]] || { log "ports must be numbers"; exit 2; }
    if [[ -n "$creds" && "$creds" != *:* ]]; then
        log "credentials must be USER:PASSWORD"
        exit 2
    fi
    [[ -x "$ORTHANC_BIN" ]] || { log "$ORTHANC_BIN not found; run deploy/dev/install-deps.sh"; exit 1; }
    command -v curl >/dev/null || { log "curl not found; run deploy/dev/install-deps.sh"; exit 1; }

    mkdir -p "$run_dir/cfg" "$run_dir/data"
    run_dir="$(cd "$run_dir" && pwd -P)"

    local pid
    pid="$(read_pid "$run_dir")"
    if is_orthanc_alive "$pid"; then
        if [[ "$(http_status "$http_port" "$creds")" == "200" ]]; then
            echo "orthanc.sh: already running (pid $pid, http://127.0.0.1:$http_port)"
            return 0
        fi
        log "pid $pid is alive but does not answer on port $http_port; restarting it"
        kill -TERM "$pid" 2>/dev/null || true
        wait_exit "$pid"
    fi
    rm -f "$run_dir/orthanc.pid"

    write_config "$run_dir" "$http_port" "$dicom_port" "$creds"

    local attempt rc t0
    t0=$(now_ms)
    if [[ ! -f "$run_dir/data/index" ]]; then
        # A new index: Orthanc creates it and keeps it locked while it runs, so it is started once, killed (the
        # empty index is committed: nothing to lose), given its statistics, and started for good below.
        if launch_once "$run_dir" "$http_port" "$creds"; then
            pid="$(read_pid "$run_dir")"
            kill -KILL "$pid" 2>/dev/null || true
            { wait "$pid"; } 2>/dev/null || true
            rm -f "$run_dir/orthanc.pid"
        fi
    fi
    plan_uid_lookups "$run_dir"
    for (( attempt = 0; attempt <= START_RETRIES; attempt++ )); do
        if (( attempt > 0 )); then
            sleep 1
        fi
        rc=0
        launch_once "$run_dir" "$http_port" "$creds" || rc=$?
        if (( rc == 0 )); then
            echo "orthanc.sh: started pid $(read_pid "$run_dir") on http://127.0.0.1:$http_port" \
                "(dicom $dicom_port) in $(( $(now_ms) - t0 )) ms, attempt $((attempt + 1))"
            return 0
        fi
        if (( rc == 2 )); then
            break
        fi
        log "attempt $((attempt + 1)) exited before being ready"
    done
    log "failed to start Orthanc; last lines of $run_dir/orthanc.log:"
    tail -n 25 "$run_dir/orthanc.log" >&2 2>/dev/null || true
    exit 1
}

cmd_stop() {
    [[ $# -eq 1 ]] || usage
    local run_dir="$1" pid t0
    pid="$(read_pid "$run_dir")"
    if [[ -z "$pid" ]]; then
        echo "orthanc.sh: not running"
        return 0
    fi
    if is_orthanc_alive "$pid"; then
        t0=$(now_ms)
        kill -TERM "$pid" 2>/dev/null || true
        if ! wait_exit "$pid"; then
            exit 1
        fi
        echo "orthanc.sh: stopped pid $pid in $(( $(now_ms) - t0 )) ms"
    else
        echo "orthanc.sh: not running (stale pid file)"
    fi
    rm -f "$run_dir/orthanc.pid"
}

cmd_status() {
    [[ $# -eq 1 ]] || usage
    local pid
    pid="$(read_pid "$1")"
    if is_orthanc_alive "$pid"; then
        echo "orthanc.sh: running (pid $pid)"
        return 0
    fi
    echo "orthanc.sh: not running"
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
