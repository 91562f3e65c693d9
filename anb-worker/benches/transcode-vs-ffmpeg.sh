#!/usr/bin/env bash
# Compares `anb-worker transcode` with the `ffmpeg` command line doing the same
# work on a generated 1080p30 6 Mbit/s input with motion and grain: trim to 30 s, 30 fps,
# fit into 1280x720 (bicubic), BT.709 colour with the same tags, watermark
# overlay, 2 s bumpers at both ends, libx264 with the same preset and CRF,
# fast-start MP4.
#
# The two run in alternating pairs (worker, then command line), so background
# load falls on both alike; each pair gives its own ratios (worker / command
# line) and the medians of those ratios are the figures to quote. Prints, side
# by side: wall time, CPU time, peak resident memory, output size and frames,
# whether the two outputs (files, and the H.264 bitstreams in them) are
# identical, and the SSIM of each output's
# 30 s of game footage against the source scaled to 720p (plus the SSIM of the
# two outputs against each other). The load average before and after is printed
# with the figures.
#
# Usage: anb-worker/benches/transcode-vs-ffmpeg.sh [--quick] [PAIRS]
#   PAIRS    alternating pairs to run (default 5; 1 with --quick)
#   --quick  a 21 s input and one pair: about a minute on 2 idle cores, to check
#            that the comparison still holds (identity, SSIM), not to quote speed
# Environment: PRESET (veryfast), CRF (23), WORK_DIR (a fresh temporary
# directory; an input already there is reused), ANB_WORKER_BIN (a release
# build to use instead of building one), CARGO_TARGET_DIR (as usual),
# CLI_COLOUR (colorspace: the command line converts the input's BT.601 matrix
# as the worker does, with `colorspace` after the scale, and the outputs are
# identical; scaler: in the scale itself, the route the worker took before,
# to compare the two routes' speed and quality).
set -euo pipefail
shopt -s inherit_errexit

QUICK=0
if [[ "${1:-}" == "--quick" ]]; then
    QUICK=1
    shift
fi
PAIRS="${1:-$((QUICK ? 1 : 5))}"
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

SECONDS_IN=$((QUICK ? 21 : 60))
KEPT=$((SECONDS_IN < 30 ? SECONDS_IN : 30))
INPUT="$WORK/input-1080p30-${SECONDS_IN}s-6M.mp4"
if [[ ! -s "$INPUT" ]]; then
    echo "generating $INPUT..." >&2
    # A moving test card with temporal noise, so the encoder sees camera-like motion, at
    # 6 Mbit/s as a phone's 1080p30 (45 MB for 60 s, under the upload limit).
    ffmpeg -hide_banner -loglevel error -nostdin -y \
        -f lavfi -i "testsrc2=size=1920x1080:rate=30:duration=$SECONDS_IN,noise=alls=10:allf=t+u" \
        -pix_fmt yuv420p -c:v libx264 -preset veryfast -b:v 6M -maxrate 6M -bufsize 12M "$INPUT"
fi

# The same artwork the worker draws, as PNG files for the command line.
"$WORKER" export-art "$WORK/art" >/dev/null

# The worker's graph (anb-worker/src/pipeline.rs, build_graph; the input is untagged,
# so BT.601, converted as anb-worker/src/colour.rs says), the bumpers converted as
# media::TO_SHOWCASE converts them.
case "${CLI_COLOUR:-colorspace}" in
colorspace)
    COLOUR="scale=1280:720:flags=bicubic:out_range=tv,format=yuv420p,\
colorspace=ispace=bt470bg:irange=tv:iprimaries=bt709:itrc=bt709:\
space=bt709:range=tv:primaries=bt709:trc=bt709:format=yuv420p"
    ;;
scaler)
    COLOUR="scale=1280:720:flags=bicubic:out_color_matrix=bt709:out_range=tv,format=yuv420p"
    ;;
*)
    echo "CLI_COLOUR is colorspace or scaler" >&2
    exit 1
    ;;
esac
TO_SHOWCASE="scale=out_color_matrix=bt709:out_range=tv,format=yuv420p"
FILTER="[0:v]setpts=PTS-STARTPTS,fps=30,trim=end_frame=$((KEPT * 30)),\
$COLOUR,setsar=1,\
pad=1280:720:0:0:color=black[main];\
[2:v]scale=out_color_matrix=bt709:out_range=tv,format=yuva420p[mark];\
[main][mark]overlay=x=W-w-24:y=24:format=yuv420:eof_action=repeat[marked];\
[1:v]$TO_SHOWCASE,setsar=1[intro];[3:v]$TO_SHOWCASE,setsar=1[outro];\
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
    -color_primaries bt709 -color_trc bt709 -colorspace bt709 -color_range tv
    -movflags +faststart "$WORK/cli.mp4")

# Runs "$@" under GNU time; prints "wall_s peak_kib cpu_s".
measure() {
    local report="$WORK/time.txt"
    /usr/bin/time -v -o "$report" "$@" >/dev/null
    local wall rss cpu
    wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {
        n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; print s }' "$report")
    rss=$(awk -F': ' '/Maximum resident set size/ { print $2 }' "$report")
    cpu=$(awk -F': ' '/User time|System time/ { s += $2 } END { print s }' "$report")
    echo "$wall $rss $cpu"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
: >"$WORK/pairs"
for ((pair = 1; pair <= PAIRS; pair++)); do
    echo "pair $pair/$PAIRS" >&2
    worker=$(measure "${WORKER_COMMAND[@]}")
    cli=$(measure "${CLI_COMMAND[@]}")
    # worker wall, rss, cpu, then the command line's
    echo "$worker $cli" >>"$WORK/pairs"
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

median() { # reads numbers, one a line
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
column_median() { awk -v c="$1" '{ print $c }' "$WORK/pairs" | median; }
ratio_median() { awk -v a="$1" -v b="$2" '{ print $a / $b }' "$WORK/pairs" | median; }
ratio_range() {
    awk -v a="$1" -v b="$2" 'NR == 1 { lo = hi = $a / $b } { r = $a / $b; if (r < lo) lo = r; if (r > hi) hi = r }
        END { printf "%.3f-%.3f", lo, hi }' "$WORK/pairs"
}

frames() {
    ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets \
        -of csv=p=0 "$1"
}

# Mean SSIM (the "All" figure) of two video streams given as filter inputs.
ssim() { # input-args... -- filter producing [a][b]
    ffmpeg -hide_banner -nostdin "$@" -f null - 2>&1 | sed -n 's/.*SSIM.* All:\([0-9.]*\).*/\1/p' | tail -1
}

# The game footage of an output (after the 2 s intro, KEPT seconds) against the
# source's first KEPT seconds scaled to 720p the same way; the watermark's corner
# counts against both alike.
against_source() {
    ssim -i "$1" -i "$INPUT" -lavfi \
        "[0:v]trim=start_frame=60:end_frame=$((60 + KEPT * 30)),setpts=PTS-STARTPTS[a];\
[1:v]trim=end_frame=$((KEPT * 30)),setpts=PTS-STARTPTS,scale=1280:720:flags=bicubic,format=yuv420p[b];\
[a][b]ssim"
}

worker_wall=$(column_median 1)
worker_rss=$(column_median 2)
worker_cpu=$(column_median 3)
cli_wall=$(column_median 4)
cli_rss=$(column_median 5)
cli_cpu=$(column_median 6)
worker_size=$(stat -c %s "$WORK/worker.mp4")
cli_size=$(stat -c %s "$WORK/cli.mp4")
if cmp -s "$WORK/worker.mp4" "$WORK/cli.mp4"; then identical=yes; else identical=no; fi
# The encoded pictures themselves: the H.264 stream taken out of each MP4. (The command line
# adds an `encoder` tag to the stream's sample description, so the files differ by it.)
bitstream() { ffmpeg -hide_banner -loglevel error -nostdin -i "$1" -map 0:v -c copy -f md5 - | cut -d= -f2; }
worker_md5=$(bitstream "$WORK/worker.mp4")
cli_md5=$(bitstream "$WORK/cli.mp4")
if [[ "$worker_md5" == "$cli_md5" ]]; then same_stream=yes; else same_stream=no; fi
worker_ssim=$(against_source "$WORK/worker.mp4")
cli_ssim=$(against_source "$WORK/cli.mp4")
mutual_ssim=$(ssim -i "$WORK/worker.mp4" -i "$WORK/cli.mp4" -lavfi "[0:v][1:v]ssim")

echo
echo "command line colour conversion: ${CLI_COLOUR:-colorspace}"
echo "input: ${SECONDS_IN} s 1920x1080 30 fps ($(stat -c %s "$INPUT") bytes); x264 preset $PRESET, crf $CRF; $PAIRS alternating pair(s) on $(nproc) CPUs"
echo "load average (1, 5, 15 min) before: $LOAD_BEFORE; after: $LOAD_AFTER"
printf '%-22s %12s %12s %14s %14s %8s %16s\n' "" "wall median" "CPU median" "peak RSS" "output bytes" "frames" "SSIM vs source"
printf '%-22s %11.2fs %11.2fs %10d KiB %14d %8s %16s\n' "anb-worker transcode" "$worker_wall" "$worker_cpu" "$worker_rss" "$worker_size" "$(frames "$WORK/worker.mp4")" "$worker_ssim"
printf '%-22s %11.2fs %11.2fs %10d KiB %14d %8s %16s\n' "ffmpeg command line" "$cli_wall" "$cli_cpu" "$cli_rss" "$cli_size" "$(frames "$WORK/cli.mp4")" "$cli_ssim"
printf 'ratios (worker / command line), median of pairs [range]: wall %.3f [%s], CPU %.3f [%s], peak memory %.3f [%s], output size %.3f\n' \
    "$(ratio_median 1 4)" "$(ratio_range 1 4)" "$(ratio_median 3 6)" "$(ratio_range 3 6)" \
    "$(ratio_median 2 5)" "$(ratio_range 2 5)" "$(awk -v a="$worker_size" -v b="$cli_size" 'BEGIN { print a / b }')"
echo "files byte-identical: $identical; H.264 bitstreams identical: $same_stream (md5 $worker_md5 / $cli_md5); SSIM worker against command line: $mutual_ssim"
echo "pairs (worker wall s, peak KiB, CPU s | command line wall s, peak KiB, CPU s):"
awk '{ printf "  %s %s %s | %s %s %s\n", $1, $2, $3, $4, $5, $6 }' "$WORK/pairs"
echo "files in $WORK"
