# Shared by the oracle scripts (sourced, not run): start `f7tfs serve` over a temporary root,
# mount it with the debug binary, guard everything with a watchdog, and clean up on exit.
#
#   source tests/oracles/lib.sh
#   oracle_start [extra f7tfs mount args...]   # sets ORACLE_MNT, ORACLE_ROOT, ORACLE_URL, ORACLE_WORK
#   ...run things in "$ORACLE_MNT"...
#   (cleanup runs from the EXIT trap: unmount, kill the daemon and the server, remove temps)
#
# Environment: F7TFS_BIN (default target/debug/f7tfs), ORACLE_DEADLINE (seconds before the
# watchdog kills the daemon and lazily unmounts, default 1200), ORACLE_KEEP=1 keeps the temps.

ORACLE_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
F7TFS_BIN=${F7TFS_BIN:-$ORACLE_REPO/target/debug/f7tfs}
ORACLE_DEADLINE=${ORACLE_DEADLINE:-1200}
ORACLE_WORK=""
ORACLE_MNT=""
ORACLE_ROOT=""
ORACLE_URL=""
SERVER_PID=""
DAEMON_PID=""
WATCHDOG_PID=""

oracle_log() { printf '%s\n' "$*" >&2; }

# Whether process $1 still runs (an exited, not yet reaped child counts as gone).
oracle_alive() {
    local st
    st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
    [[ -n $st && $st != Z ]]
}

# What is blocked where: processes of this script (descendants of it) with a thread waiting
# for a FUSE answer (wchan request_wait_answer), and any process with its cwd or an open file
# under the mount, with the syscall number each is in.
oracle_is_ours() {
    local pid=$1 ppid
    while [[ -n $pid && $pid != 0 && $pid != 1 ]]; do
        [[ $pid == "$$" ]] && return 0
        ppid=$(awk '/^PPid:/{print $2}' "/proc/$pid/status" 2>/dev/null) || return 1
        pid=$ppid
    done
    return 1
}

oracle_hung_report() {
    local mp=$1 p t pid wchan cmd found=0
    for p in /proc/[0-9]*; do
        pid=${p#/proc/}
        [[ $pid == "$DAEMON_PID" ]] && continue
        local uses=0
        if [[ $(readlink "$p/cwd" 2>/dev/null) == "$mp"* ]] \
            || ls -l "$p/fd" 2>/dev/null | grep -qF -- "$mp"; then
            uses=1
        fi
        for t in "$p"/task/*; do
            wchan=$(cat "$t/wchan" 2>/dev/null)
            if ((uses)) || { [[ $wchan == request_wait_answer ]] && oracle_is_ours "$pid"; }; then
                cmd=$(tr '\0' ' ' <"$p/cmdline" 2>/dev/null | cut -c1-120)
                printf '  pid %s tid %s wchan=%s syscall=%s cmd=%s\n' "$pid" "${t##*/}" \
                    "$wchan" "$(cut -d' ' -f1 "$t/syscall" 2>/dev/null)" "$cmd"
                found=1
            fi
        done
    done
    ((found)) || echo "  (no blocked process found)"
}

oracle_cleanup() {
    local rc=$?
    set +e
    if [[ -n $WATCHDOG_PID ]]; then
        kill "$WATCHDOG_PID" 2>/dev/null
        wait "$WATCHDOG_PID" 2>/dev/null
    fi
    if [[ -n $ORACLE_MNT ]] && mountpoint -q "$ORACLE_MNT" 2>/dev/null; then
        fusermount3 -u "$ORACLE_MNT" 2>/dev/null || fusermount3 -u -z "$ORACLE_MNT" 2>/dev/null
    fi
    if [[ -n $DAEMON_PID ]]; then
        local i
        for i in $(seq 1 200); do oracle_alive "$DAEMON_PID" || break; sleep 0.1; done
        if oracle_alive "$DAEMON_PID"; then
            oracle_log "f7tfs daemon still running after unmount; killing pid $DAEMON_PID"
            kill -9 "$DAEMON_PID" 2>/dev/null
        fi
        wait "$DAEMON_PID" 2>/dev/null
    fi
    if [[ -n $SERVER_PID ]]; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
    fi
    if [[ -n $ORACLE_WORK && -d $ORACLE_WORK ]]; then
        if [[ ${ORACLE_KEEP:-0} == 1 ]]; then
            oracle_log "kept $ORACLE_WORK"
        else
            rm -rf "$ORACLE_WORK"
        fi
    fi
    return $rc
}

# The watchdog: after ORACLE_DEADLINE seconds, report what hangs on the mount, kill the
# daemon, lazily unmount (so blocked callers get ENOTCONN and the script can finish).
oracle_watchdog() {
    local deadline=$1 mp=$2 daemon=$3 log=$4
    local sp
    sleep "$deadline" &
    sp=$!
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    wait "$sp"
    {
        echo "watchdog: still running after ${deadline}s; killing f7tfs daemon (pid $daemon) and unmounting $mp"
        echo "watchdog: processes blocked on the mount (wchan request_wait_answer = a FUSE op without answer):"
        oracle_hung_report "$mp"
        echo "watchdog: daemon log tail (the last op spans show the hung operation):"
        tail -n 40 "$log"
    } >&2
    kill -9 "$daemon" 2>/dev/null
    fusermount3 -u -z "$mp" 2>/dev/null
}

# oracle_start [extra mount args...]
oracle_start() {
    [[ -x $F7TFS_BIN ]] || { oracle_log "missing $F7TFS_BIN (run cargo build first)"; return 1; }
    [[ -e /dev/fuse ]] || { oracle_log "/dev/fuse is missing: the oracles need FUSE"; return 1; }
    trap oracle_cleanup EXIT
    trap 'exit 130' INT TERM
    ORACLE_WORK=$(mktemp -d /tmp/f7tfs-oracle-XXXXXX)
    chmod 755 "$ORACLE_WORK"
    ORACLE_ROOT=$ORACLE_WORK/root
    ORACLE_MNT=$ORACLE_WORK/mnt
    mkdir -p "$ORACLE_ROOT" "$ORACLE_MNT" "$ORACLE_WORK/staging" "$ORACLE_WORK/cache"
    chmod 755 "$ORACLE_ROOT" "$ORACLE_MNT"
    F7TFS_LOG=${SERVER_LOG_FILTER:-warn} NO_COLOR=1 "$F7TFS_BIN" serve "$ORACLE_ROOT" \
        --listen 127.0.0.1:0 --job-delay-ms 0 --upload-poll-ms 20 \
        >"$ORACLE_WORK/serve.out" 2>"$ORACLE_WORK/serve.log" &
    SERVER_PID=$!
    local i
    for i in $(seq 1 200); do
        grep -q '^export AUTH_TOKEN_URL=' "$ORACLE_WORK/serve.out" 2>/dev/null && break
        oracle_alive "$SERVER_PID" || { cat "$ORACLE_WORK/serve.log" >&2; return 1; }
        sleep 0.05
    done
    # shellcheck disable=SC1091
    source <(grep '^export ' "$ORACLE_WORK/serve.out")
    ORACLE_URL=$FIRECREST_URL
    ORACLE_ROOT=$(realpath "$ORACLE_ROOT")
    F7TFS_LOG=${F7TFS_LOG:-info,f7tfs=debug} NO_COLOR=1 "$F7TFS_BIN" mount -f \
        "$FIRECREST_SYSTEM:$ORACLE_ROOT" "$ORACLE_MNT" \
        --staging-dir "$ORACLE_WORK/staging" --cache-dir "$ORACLE_WORK/cache" \
        --rate-limit 0 "$@" </dev/null >"$ORACLE_WORK/daemon.out" 2>"$ORACLE_WORK/daemon.log" &
    DAEMON_PID=$!
    for i in $(seq 1 300); do
        mountpoint -q "$ORACLE_MNT" && break
        if ! oracle_alive "$DAEMON_PID"; then
            oracle_log "f7tfs mount exited before the mount was live:"
            tail -n 30 "$ORACLE_WORK/daemon.log" >&2
            return 1
        fi
        sleep 0.1
    done
    mountpoint -q "$ORACLE_MNT" || { oracle_log "mount not live after 30 s"; return 1; }
    oracle_watchdog "$ORACLE_DEADLINE" "$ORACLE_MNT" "$DAEMON_PID" "$ORACLE_WORK/daemon.log" &
    WATCHDOG_PID=$!
}

# Server counters as JSON.
oracle_stats() { curl -fsS "$ORACLE_URL/_f7tfs/stats"; }
oracle_stats_reset() { curl -fsS -X POST "$ORACLE_URL/_f7tfs/stats/reset" >/dev/null; }
