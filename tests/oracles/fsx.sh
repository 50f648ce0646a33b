#!/usr/bin/env bash
# fsx (the Rust port, crates.io `fsx`) on one file of a real f7tfs mount of `f7tfs serve`.
#
#   tests/oracles/fsx.sh                  # CI: 10,000 operations, seed 1
#   tests/oracles/fsx.sh --long           # benchmark: 100,000 operations for each of 3 seeds
#   FSX_OPS=N FSX_SEEDS="1 2" FSX_FLEN=BYTES tests/oracles/fsx.sh
#
# FSX_FLEN (default 256 KiB) bounds the file; above the direct-upload limit (about 3.5 MiB
# on the bundled server) closes go through the staged transfer route instead.
#
# fsx checks every byte it reads (pread, mmap reads, sendfile, after close/reopen) against its
# own model of the file; any mismatch is a data-loss bug. After each run the file is closed
# (uploaded) and the remote copy is compared with what the mount shows. Exits non-zero on any
# failure; fsx's artifacts (.fsxlog, .fsxgood) are copied to $FSX_ARTIFACTS if set.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/oracles/lib.sh
source "$HERE/lib.sh"

FSX=${FSX:-$(command -v fsx || echo "$HOME/.cargo/bin/fsx")}
[[ -x $FSX ]] || { echo "fsx not found (cargo install --locked fsx)"; exit 77; }
OPS=${FSX_OPS:-10000}
SEEDS=${FSX_SEEDS:-1}
if [[ ${1:-} == --long ]]; then
    OPS=${FSX_OPS:-100000}
    SEEDS=${FSX_SEEDS:-"1 2 3"}
fi

# FSX_MOUNT_ARGS: extra `f7tfs mount` options, e.g. "--writeback-delay 2".
# shellcheck disable=SC2086
oracle_start ${FSX_MOUNT_ARGS:-} || exit 1
CONF=$ORACLE_WORK/fsx.toml
# Every operation Linux offers. mmap is on: the mount does not use direct_io, so shared
# writable mappings go through the page cache and are written back into the staged file
# (msync/munmap/close), which is then uploaded at close like any write.
cat >"$CONF" <<EOF
flen = ${FSX_FLEN:-262144}
[opsize]
max = 65536
min = 0
align = 1
[weights]
close_open = 2
read = 10
write = 10
mapread = 10
mapwrite = 10
invalidate = 1
truncate = 3
fsync = 1
fdatasync = 1
posix_fallocate = 1
punch_hole = 0
sendfile = 1
posix_fadvise = 1
copy_file_range = 2
EOF

rc=0
for seed in $SEEDS; do
    f=$ORACLE_MNT/fsx-$seed.bin
    art=$ORACLE_WORK/artifacts-$seed
    mkdir -p "$art"
    start=$(date +%s)
    timeout -k 10 "${FSX_TIMEOUT:-1500}" "$FSX" -N "$OPS" -S "$seed" -f "$CONF" -P "$art" "$f" \
        >"$art/fsx.out" 2>&1
    frc=$?
    secs=$(($(date +%s) - start))
    if ((frc != 0)); then
        echo "fsx seed $seed: FAILED after ${secs}s (exit $frc)"
        tail -n 30 "$art/fsx.out"
        ((frc == 124 || frc == 137)) && oracle_hung_report "$ORACLE_MNT"
        tail -n 15 "$ORACLE_WORK/daemon.log"
        rc=1
    else
        # fsx closed the file: the remote copy must equal what the mount shows.
        if cmp -s "$f" "$ORACLE_ROOT/fsx-$seed.bin"; then
            echo "fsx seed $seed: $OPS operations OK in ${secs}s (remote copy identical, $(stat -c %s "$f") bytes)"
        else
            echo "fsx seed $seed: $OPS operations OK, but the remote copy differs from the mount"
            cmp "$f" "$ORACLE_ROOT/fsx-$seed.bin" | head -3
            rc=1
        fi
    fi
    if [[ -n ${FSX_ARTIFACTS:-} ]]; then
        mkdir -p "$FSX_ARTIFACTS" && cp -r "$art" "$FSX_ARTIFACTS"/
    fi
done
exit $rc
