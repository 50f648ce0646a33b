#!/usr/bin/env bash
# pjdfstest (the Rust rewrite, crates.io `pjdfstest`) on a real f7tfs mount of `f7tfs serve`.
#
#   tests/oracles/pjdfstest.sh [PATTERN...]    # default: every test of every group
#
# Prints `GROUP: N passed, N failed, N skipped` per group and a total, then lists the failures.
# Exits non-zero when a test fails that is not on tests/oracles/pjdfstest-expected-failures.txt
# (one test name per line, `name  # reason`), or when a listed test unexpectedly passes
# (so the list stays true; set PJDFSTEST_ALLOW_XPASS=1 to only warn).
# PJDFSTEST_MOUNT_ARGS adds mount options (e.g. "--writeback-delay 2").
# Needs root (pjdfstest switches users). Env: PJDFSTEST (binary), see lib.sh for the rest.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/oracles/lib.sh
source "$HERE/lib.sh"

PJDFSTEST=${PJDFSTEST:-$(command -v pjdfstest || echo "$HOME/.cargo/bin/pjdfstest")}
XFAIL_FILE=$HERE/pjdfstest-expected-failures.txt
[[ -x $PJDFSTEST ]] || { echo "pjdfstest not found (cargo install --locked pjdfstest)"; exit 77; }
[[ $(id -u) == 0 ]] || { echo "pjdfstest needs root (it switches users)"; exit 77; }

# Groups are the first component of the test names (chmod::..., link::...); with no
# argument pjdfstest runs all of them in one go and the output is split per group here.
PATTERNS=("$@")
# Users/groups that exist on a stock Debian; pjdfstest needs two (user, group) pairs whose
# user is a member of the group.
pick_auth() {
    local pairs=("nobody nogroup" "daemon daemon" "bin bin" "sys sys" "nobody nobody")
    local out=() p u g
    for p in "${pairs[@]}"; do
        read -r u g <<<"$p"
        id "$u" >/dev/null 2>&1 && getent group "$g" >/dev/null || continue
        # the user's primary group or a listed member
        if [[ $(id -gn "$u") == "$g" ]] || id -Gn "$u" | tr ' ' '\n' | grep -qx "$g"; then
            out+=("[\"$u\", \"$g\"]")
        fi
        ((${#out[@]} == 2)) && break
    done
    ((${#out[@]} == 2)) || { echo "need two existing user/group pairs" >&2; return 1; }
    printf '%s, %s' "${out[0]}" "${out[1]}"
}

# PJDFSTEST_MOUNT_ARGS: extra `f7tfs mount` options, e.g. "--writeback-delay 2".
# shellcheck disable=SC2086
oracle_start -o allow_other ${PJDFSTEST_MOUNT_ARGS:-} || exit 1
CONF=$ORACLE_WORK/pjdfstest.toml
cat >"$CONF" <<EOF
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
# mtimes round-trip through the remote with 1 s resolution
naptime = 1.01
allow_remount = false

[dummy_auth]
entries = [$(pick_auth)]
EOF

declare -A XFAIL
if [[ -f $XFAIL_FILE ]]; then
    while IFS= read -r line; do
        name=${line%%#*}
        name=${name//[[:space:]]/}
        [[ -n $name ]] && XFAIL[$name]=1
    done <"$XFAIL_FILE"
fi

RESULTS=$ORACLE_WORK/results
mkdir -p "$RESULTS"
ALL=$RESULTS/all.txt
# A local directory as the second file system: rename/link across it must be EXDEV.
SECONDARY=$ORACLE_WORK/secondary
mkdir -p "$SECONDARY" && chmod 755 "$SECONDARY"
NO_COLOR=1 CLICOLOR=0 timeout -k 10 "${PJDFSTEST_TIMEOUT:-1800}" \
    "$PJDFSTEST" -c "$CONF" -p "$ORACLE_MNT" -s "$SECONDARY" "${PATTERNS[@]}" >"$ALL" 2>&1
run_rc=$?
if ((run_rc == 124 || run_rc == 137)); then
    echo "pjdfstest timed out; last lines and what is blocked on the mount:"
    tail -n 5 "$ALL"
    oracle_hung_report "$ORACLE_MNT"
    tail -n 20 "$ORACLE_WORK/daemon.log"
fi
# Result lines: NAME <spaces> ok | FAILED | skipped | failed as expected | PASSED UNEXPECTEDLY
LINES=$RESULTS/lines.txt
grep -E '^[a-z_0-9]+::[a-z_0-9:]+ +(ok|FAILED|skipped)$' "$ALL" | awk '{print $1, $2}' >"$LINES"
mapfile -t GROUPS_RUN < <(cut -d: -f1 "$LINES" | awk '!seen[$0]++' | sort)
if ((${#GROUPS_RUN[@]} == 0)); then
    echo "pjdfstest produced no results (exit $run_rc):"
    tail -n 30 "$ALL"
    exit 1
fi
tot_p=0 tot_f=0 tot_s=0
unexpected=() xpass=() expected=()
for g in "${GROUPS_RUN[@]}"; do
    p=$(grep -c "^$g::[^ ]* ok$" "$LINES")
    s=$(grep -c "^$g::[^ ]* skipped$" "$LINES")
    f=0 fx=0
    for t in $(grep "^$g::[^ ]* FAILED$" "$LINES" | cut -d' ' -f1); do
        f=$((f + 1))
        if [[ -n ${XFAIL[$t]:-} ]]; then
            expected+=("$t") fx=$((fx + 1))
        else
            unexpected+=("$t")
        fi
    done
    for t in $(grep "^$g::[^ ]* ok$" "$LINES" | cut -d' ' -f1); do
        [[ -n ${XFAIL[$t]:-} ]] && xpass+=("$t")
    done
    printf '%-16s %4d passed, %4d failed, %4d skipped   (%d of the failures expected)\n' \
        "$g:" "$p" "$f" "$s" "$fx"
    tot_p=$((tot_p + p)) tot_f=$((tot_f + f)) tot_s=$((tot_s + s))
done
printf '%-16s %4d passed, %4d failed, %4d skipped   (%d of the failures expected)\n' \
    "total:" "$tot_p" "$tot_f" "$tot_s" "${#expected[@]}"
echo "expected failures are listed with their reasons in $XFAIL_FILE"

rc=0
if ((${#unexpected[@]})); then
    echo "UNEXPECTED failures (${#unexpected[@]}):"
    for t in "${unexpected[@]}"; do
        echo "  $t"
        # the panic message printed under the test line
        grep -A1 -E "^$t +FAILED$" "$ALL" | sed -n '2p' | sed 's/^\s*/      /'
    done
    rc=1
fi
if ((${#xpass[@]})); then
    echo "listed as expected failures but PASSED (remove them from the list):"
    printf '  %s\n' "${xpass[@]}"
    [[ ${PJDFSTEST_ALLOW_XPASS:-0} == 1 ]] || rc=1
fi
if [[ -n ${PJDFSTEST_RESULTS:-} ]]; then
    mkdir -p "$PJDFSTEST_RESULTS" && cp "$ALL" "$PJDFSTEST_RESULTS"/pjdfstest.out
fi
exit $rc
