#!/usr/bin/env bash
# A real file manager on a real mount: pcmanfm under Xvfb opens a directory holding 200
# images, 20 subdirectories and a few 50 MB files; once it has settled (thumbnails drawn),
# a screenshot is taken and the server's counters are checked:
#   - the listing costs about one `ls` per directory shown (never one call per file),
#   - thumbnail and MIME peeks never download a whole large file.
#
#   tests/oracles/filemanager.sh [SCREENSHOT.png]
#
# Exits 77 (skip) when Xvfb, pcmanfm or a screenshot tool is missing or no display starts.
set -uo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/oracles/lib.sh
source "$HERE/lib.sh"

SHOT=${1:-}
for t in Xvfb pcmanfm; do
    command -v "$t" >/dev/null || { echo "$t is missing (apt-get install xvfb pcmanfm)"; exit 77; }
done
if command -v scrot >/dev/null; then SHOOT=scrot
elif command -v import >/dev/null; then SHOOT=import
else echo "no screenshot tool (apt-get install scrot)"; exit 77; fi

XVFB_PID="" FM_PID=""
# Every process the file manager starts (its D-Bus session, helpers) carries this marker in
# its environment, so cleanup ends exactly those, by pid.
MARK=""
fm_cleanup() {
    local rc=$? p
    [[ -n $FM_PID ]] && kill "$FM_PID" 2>/dev/null && wait "$FM_PID" 2>/dev/null
    if [[ -n $MARK ]]; then
        for p in /proc/[0-9]*; do
            grep -qzx "F7TFS_ORACLE_FM=$MARK" "$p/environ" 2>/dev/null && kill "${p#/proc/}" 2>/dev/null
        done
    fi
    [[ -n $XVFB_PID ]] && kill "$XVFB_PID" 2>/dev/null && wait "$XVFB_PID" 2>/dev/null
    # A helper's FUSE mount under our temp dir (gvfs), should one have appeared anyway.
    awk -v w="$ORACLE_WORK/run" '$2 ~ "^"w {print $2}' /proc/mounts | while read -r m; do
        fusermount3 -u -z "$m" 2>/dev/null
    done
    (exit $rc)
    oracle_cleanup
}

oracle_start || exit 1
trap fm_cleanup EXIT

# The remote side, written directly into the served directory before anything is cached.
GALLERY=$ORACLE_ROOT/gallery
mkdir -p "$GALLERY"
python3 - "$GALLERY" <<'EOF'
import os, struct, sys, zlib
d = sys.argv[1]
def png(w, h, rgb):
    raw = b"".join(b"\x00" + bytes(rgb) * w for _ in range(h))
    def chunk(t, data):
        c = t + data
        return struct.pack(">I", len(data)) + c + struct.pack(">I", zlib.crc32(c) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
for i in range(200):
    rgb = ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256)
    with open(os.path.join(d, "img-%03d.png" % i), "wb") as f:
        f.write(png(64, 48, rgb))
for i in range(20):
    sub = os.path.join(d, "folder-%02d" % i)
    os.mkdir(sub)
    for j in range(5):
        with open(os.path.join(sub, "inner-%d.png" % j), "wb") as f:
            f.write(png(32, 32, (j * 50, i * 12, 200)))
# Large files a thumbnailer or MIME sniffer might be tempted to read whole: an image,
# a video and an archive of 50 MB each (valid headers, sparse bodies).
heads = {"huge-photo.png": png(8, 8, (255, 0, 0))[:33], "huge-video.mp4": b"\x00\x00\x00\x18ftypmp42",
         "huge-archive.tar.gz": b"\x1f\x8b\x08\x00"}
for name, head in heads.items():
    with open(os.path.join(d, name), "wb") as f:
        f.write(head)
        f.truncate(50 * 1024 * 1024)
EOF
LARGE_BYTES=$((3 * 50 * 1024 * 1024))

# A fresh HOME: default pcmanfm settings (icon view, thumbnails on) and an empty
# thumbnail cache, so every thumbnail is really made from the mount.
FMHOME=$ORACLE_WORK/home
mkdir -p "$FMHOME/.config/libfm" "$FMHOME/.config/pcmanfm/default"
cat >"$FMHOME/.config/libfm/libfm.conf" <<'EOF'
[config]
show_thumbnail=1
thumbnail_local=1
thumbnail_max=2048
EOF
cat >"$FMHOME/.config/pcmanfm/default/pcmanfm.conf" <<'EOF'
[ui]
win_width=1200
win_height=860
view_mode=icon
show_hidden=0
side_pane_mode=places
EOF

DISP=""
for n in $(seq 91 120); do
    [[ -e /tmp/.X11-unix/X$n || -e /tmp/.X$n-lock ]] && continue
    Xvfb ":$n" -screen 0 1280x900x24 -nolisten tcp >"$ORACLE_WORK/xvfb.log" 2>&1 &
    XVFB_PID=$!
    for _ in $(seq 1 50); do [[ -e /tmp/.X11-unix/X$n ]] && break; sleep 0.1; done
    if [[ -e /tmp/.X11-unix/X$n ]] && oracle_alive "$XVFB_PID"; then DISP=":$n"; break; fi
    kill "$XVFB_PID" 2>/dev/null; wait "$XVFB_PID" 2>/dev/null; XVFB_PID=""
done
[[ -n $DISP ]] || { echo "Xvfb could not start a display"; cat "$ORACLE_WORK/xvfb.log"; exit 77; }

mkdir -p "$ORACLE_WORK/run" && chmod 700 "$ORACLE_WORK/run"
oracle_stats_reset
MARK=$ORACLE_WORK
RUN=()
command -v dbus-run-session >/dev/null && RUN=(dbus-run-session --)
# GIO_USE_VFS=local: no gvfs daemons (and no gvfsd-fuse mount) for a local path.
F7TFS_ORACLE_FM=$MARK GIO_USE_VFS=local GVFS_DISABLE_FUSE=1 \
    HOME=$FMHOME XDG_CONFIG_HOME=$FMHOME/.config XDG_CACHE_HOME=$FMHOME/.cache \
    XDG_RUNTIME_DIR=$ORACLE_WORK/run DISPLAY=$DISP NO_AT_BRIDGE=1 \
    "${RUN[@]}" pcmanfm --new-win "$ORACLE_MNT/gallery" >"$ORACLE_WORK/pcmanfm.log" 2>&1 &
FM_PID=$!

# Settled: the server saw no new call for 4 s (at most 90 s), and thumbnails exist.
calls() { oracle_stats | python3 -c 'import json,sys; print(sum(e["calls"] for e in json.load(sys.stdin)["endpoints"].values()))'; }
last=-1 quiet=0
for _ in $(seq 1 180); do
    sleep 0.5
    oracle_alive "$FM_PID" || { echo "pcmanfm exited:"; cat "$ORACLE_WORK/pcmanfm.log"; exit 1; }
    now=$(calls)
    if [[ $now == "$last" ]]; then quiet=$((quiet + 1)); else quiet=0; last=$now; fi
    ((quiet >= 8)) && break
done
sleep 1
thumbs=$(find "$FMHOME/.cache/thumbnails" -name '*.png' 2>/dev/null | wc -l)

SHOTFILE=${SHOT:-$ORACLE_WORK/pcmanfm.png}
mkdir -p "$(dirname "$SHOTFILE")"
if [[ $SHOOT == scrot ]]; then
    DISPLAY=$DISP scrot --overwrite "$SHOTFILE" 2>/dev/null || DISPLAY=$DISP scrot "$SHOTFILE"
else
    DISPLAY=$DISP import -window root "$SHOTFILE"
fi

oracle_stats >"$ORACLE_WORK/stats.json"
python3 - "$ORACLE_WORK/stats.json" "$thumbs" "$LARGE_BYTES" "$SHOTFILE" <<'EOF'
import json, sys
stats = json.load(open(sys.argv[1]))["endpoints"]
thumbs, large, shot = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def calls(k): return stats.get(k, {}).get("calls", 0)
out = sum(e["bytes_out"] for k, e in stats.items())
ls, stat, dl = calls("GET ops/ls"), calls("GET ops/stat"), calls("GET ops/download")
print("pcmanfm on gallery/ (200 images, 20 folders, 3 x 50 MB): settled")
print("server calls (calls/bytes sent): " + ", ".join(
    "%s=%d/%d" % (k, e["calls"], e["bytes_out"]) for k, e in sorted(stats.items())))
print("bytes sent by the server: %d (large files hold %d)" % (out, large))
print("images read: %d, thumbnails cached: %d; screenshot: %s" % (dl, thumbs, shot))
bad = []
# One listing of gallery/ (plus, at most, its parents and the root for the places pane and
# path bar); never one call per entry (225 of them).
if ls > 3: bad.append("%d ls calls for one directory shown (expected about 1)" % ls)
if stat > 10: bad.append("%d stat calls: attributes should come from the listing" % stat)
# Thumbnails of the 200 small images read them whole (about 200 x 100 bytes); the three
# 50 MB files are only peeked at. Anything near a whole large file is a failure.
if out > 8 * 1024 * 1024: bad.append("%d bytes downloaded: a large file was read whole" % out)
# Thumbnails (drawn from the images themselves when they are smaller than a thumbnail):
# pcmanfm must really have read the images through the mount.
if dl < 150: bad.append("only %d downloads: pcmanfm did not read the images" % dl)
if bad:
    print("FAILED:\n  " + "\n  ".join(bad)); sys.exit(1)
print("OK")
EOF
