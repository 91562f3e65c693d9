#!/usr/bin/env bash
# Compares `anb-worker transcode` with the `ffmpeg` command line doing the same
# work on a 60 s 1080p30 input with motion: trim to 30 s, 30 fps, fit into
# 1280x720, watermark overlay, 2 s bumpers at both ends, libx264 with the same
# preset and CRF, fast-start MP4.
#
# Prints the median wall time and peak resident memory of each, their ratios,
# and the output sizes. Runs alternate between the two so that background load
# affects both alike.
#
# Usage: anb-worker/benches/transcode-vs-ffmpeg.sh [RUNS]   (default 5)
# Environment: PRESET (veryfast), CRF (23), WORK_DIR (a fresh temporary
# directory; an input already there is reused), ANB_WORKER_BIN (a release
# build to use instead of building one), CARGO_TARGET_DIR (as usual).
set -euo pipefail

RUNS="${1:-5}"
PRESET="${PRESET:-veryfast}"
CRF="${CRF:-23}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
WORK="${WORK_DIR:-$(mktemp -d)}"
mkdir -p "$WORK"

for tool in ffmpeg ffprobe /usr/bin/time; do
    command -v "$tool" >/dev/null || {
        echo "missing $tool (apt-get install ffmpeg time)" >&2
        exit 1
    }
done

if [[ -n "${ANB_WORKER_BIN:-}" ]]; then
    WORKER="$ANB_WORKER_BIN"
else
    echo "building anb-worker (release)..." >&2
    (cd "$ROOT" && cargo build --release --quiet -p anb-worker)
    TARGET="${CARGO_TARGET_DIR:-$ROOT/target}"
    [[ "$TARGET" = /* ]] || TARGET="$ROOT/$TARGET"
    WORKER="$TARGET/release/anb-worker"
fi

INPUT="$WORK/input-1080p30-60s.mp4"
if [[ ! -s "$INPUT" ]]; then
    echo "generating $INPUT..." >&2
    # A moving test card with temporal noise, so the encoder sees camera-like motion.
    ffmpeg -hide_banner -loglevel error -nostdin -y \
        -f lavfi -i "testsrc2=size=1920x1080:rate=30:duration=60,noise=alls=10:allf=t+u" \
        -pix_fmt yuv420p -c:v libx264 -preset veryfast -crf 20 "$INPUT"
fi

# The same artwork the worker draws, as PNG files for the command line.
"$WORKER" export-art "$WORK/art" >/dev/null

FILTER="[0:v]setpts=PTS-STARTPTS,fps=30,trim=end_frame=900,\
scale=1280:720:force_original_aspect_ratio=decrease:force_divisible_by=2:flags=bicubic,setsar=1,\
pad=1280:720:(ow-iw)/2:(oh-ih)/2:color=black[main];\
[main][2:v]overlay=x=W-w-24:y=24:format=yuv420:eof_action=repeat[marked];\
[1:v]format=yuv420p,setsar=1[intro];[3:v]format=yuv420p,setsar=1[outro];\
[intro][marked][outro]concat=n=3:v=1:a=0[out]"

WORKER_COMMAND=("$WORKER" transcode --quiet --preset "$PRESET" --crf "$CRF"
    --thumbnail "$WORK/worker.jpg" "$INPUT" "$WORK/worker.mp4")

CLI_COMMAND=(ffmpeg -hide_banner -loglevel error -nostdin -y
    -i "$INPUT"
    -loop 1 -framerate 30 -t 2 -i "$WORK/art/bumper.png"
    -i "$WORK/art/watermark.png"
    -loop 1 -framerate 30 -t 2 -i "$WORK/art/bumper.png"
    -filter_complex "$FILTER" -map "[out]" -an
    -c:v libx264 -preset "$PRESET" -crf "$CRF" -pix_fmt yuv420p -r 30
    -movflags +faststart "$WORK/cli.mp4")

# Runs "$@" under GNU time; appends "wall_s peak_kib cpu_s" to the file $RESULT.
measure() {
    local report="$WORK/time.txt"
    /usr/bin/time -v -o "$report" "$@" >/dev/null
    local wall rss cpu
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$report")
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$report")
    cpu=$(awk -F': ' '/User time|System time/ { s += $2 } END { print s }' "$report")
    echo "$wall $rss $cpu" >>"$RESULT"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$WORK/worker.runs"
: >"$WORK/cli.runs"
for ((run = 1; run <= RUNS; run++)); do
    echo "run $run/$RUNS" >&2
    RESULT="$WORK/worker.runs" measure "${WORKER_COMMAND[@]}"
    RESULT="$WORK/cli.runs" measure "${CLI_COMMAND[@]}"
done

median() { # column file
    sort -g -k"$1" "$2" | awk -v c="$1" '{ v[NR] = $c } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

frames() {
    ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets \
        -of csv=p=0 "$1"
}

worker_wall=$(median 1 "$WORK/worker.runs")
cli_wall=$(median 1 "$WORK/cli.runs")
worker_rss=$(median 2 "$WORK/worker.runs")
cli_rss=$(median 2 "$WORK/cli.runs")
worker_cpu=$(median 3 "$WORK/worker.runs")
cli_cpu=$(median 3 "$WORK/cli.runs")
worker_size=$(stat -c %s "$WORK/worker.mp4")
cli_size=$(stat -c %s "$WORK/cli.mp4")

echo
echo "input: 60 s 1920x1080 30 fps ($(stat -c %s "$INPUT") bytes); x264 preset $PRESET, crf $CRF; $RUNS runs each on $(nproc) CPUs"
echo "load average before/after: $LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-22s %12s %12s %14s %14s %8s\n' "" "wall median" "CPU median" "peak RSS" "output bytes" "frames"
printf '%-22s %11.2fs %11.2fs %10d KiB %14d %8s\n' "anb-worker transcode" "$worker_wall" "$worker_cpu" "$worker_rss" "$worker_size" "$(frames "$WORK/worker.mp4")"
printf '%-22s %11.2fs %11.2fs %10d KiB %14d %8s\n' "ffmpeg command line" "$cli_wall" "$cli_cpu" "$cli_rss" "$cli_size" "$(frames "$WORK/cli.mp4")"
awk -v a="$worker_wall" -v b="$cli_wall" -v g="$worker_cpu" -v h="$cli_cpu" -v c="$worker_rss" -v d="$cli_rss" -v e="$worker_size" -v f="$cli_size" \
    'BEGIN { printf "ratios (worker / command line): wall %.3f, CPU %.3f, peak memory %.3f, output size %.3f\n", a / b, g / h, c / d, e / f }'
echo "all runs (wall s, peak KiB, CPU s): worker: $(tr '\n' ';' <"$WORK/worker.runs") cli: $(tr '\n' ';' <"$WORK/cli.runs")"
echo "files in $WORK"
