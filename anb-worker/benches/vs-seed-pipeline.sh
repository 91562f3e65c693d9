#!/usr/bin/env bash
# Compares `anb-worker transcode` with the seed system's pipeline on the same
# generated 1080p30 inputs with motion and grain (by default the 50 MB and
# 100 MB inputs of capacity/worker).
#
# The seed system (a Go backend; its `video_processing.go`) ran the `ffmpeg`
# program once per step, each step reading the previous step's file. The
# `seed_pipeline` function below is a reconstruction of it from the
# description of those steps, not the seed's code.
#
# Ours runs at two settings: the seed's own (x264 ultrafast, CRF 28) and our
# default (veryfast, CRF 23). For each setting, ours and the seed run in
# alternating pairs on the same input, so background load falls on both alike;
# each pair gives its own ratios (ours / seed) and the medians of those ratios
# are the figures to quote. Prints, side by side: wall time, CPU time, peak
# resident memory (the largest of the seed's steps), output size, frames and
# duration, and the quality of each output's game footage (after its 2 s
# opening bumper) against the source scaled to 720p: SSIM and PSNR (ffmpeg's
# ssim and psnr filters). Also the seed's throughput over ours (the seed's wall
# time over ours) against the aim of at least 2 at the seed's own settings, and
# the load average before and after.
#
# Every run checks its outputs: 1280x720, the expected duration, SSIM and PSNR
# parsed and plausible (a misaligned or broken output scores far lower); it
# exits non-zero otherwise.
#
# Usage: anb-worker/benches/vs-seed-pipeline.sh [--quick] [PAIRS]
#   PAIRS    alternating pairs per setting and input (default 3; 1 with --quick)
#   --quick  one 21 s input, one pair, ours at the seed's settings only: about a
#            minute on 2 idle cores, to check that the comparison still runs and
#            its outputs hold, not to quote speed
# Environment: SIZES (input sizes in MB, "50 100"; each 50 or 100), SETTINGS
# (ours, as preset/CRF pairs: "ultrafast/28 veryfast/23"; "ultrafast/28" with
# --quick), WORK_DIR (a fresh temporary directory; inputs already there are
# reused), ANB_WORKER_BIN (a release build to use instead of building one),
# CARGO_TARGET_DIR (as usual).
set -euo pipefail
shopt -s inherit_errexit

# The seed's encoder settings, in each of its encoding steps.
SEED_PRESET=ultrafast
SEED_CRF=28

# The seed system's pipeline, reconstructed: four `ffmpeg` runs, each a process
# of its own reading the previous one's file from disk.
#   seed_pipeline INPUT BUMPER_CLIP WATERMARK_PNG OUTPUT SCRATCH_DIR
# BUMPER_CLIP is the opening and closing bumper as a ready-made clip (see
# make_seed_bumper): the seed concatenated clips it had, so making it is not
# part of the seed's time per upload.
seed_pipeline() {
    local input="$1" bumper="$2" watermark="$3" output="$4" scratch="$5"
    local quiet=(-hide_banner -loglevel error -nostdin -y)
    # 1. Trim to the first 30 s with stream copy: no decoding, so the cut falls
    #    on packets (the end may run a frame or two past 30 s). `-ss 0` goes
    #    before the input: as an output option, FFmpeg's stream copy drops a
    #    source's whole first GOP when the source has B-frames (its first
    #    packet's decoding time is below 0), which would not be the seed's
    #    intent.
    ffmpeg "${quiet[@]}" -ss 0 -i "$input" -t 30 -c copy "$scratch/seed-trimmed.mp4"
    # 2. Scale to fit 1280x720 keeping the aspect ratio and pad to exactly
    #    1280x720 (centred, black), as its own libx264 encode.
    ffmpeg "${quiet[@]}" -i "$scratch/seed-trimmed.mp4" \
        -vf "scale=1280:720:force_original_aspect_ratio=decrease,pad=1280:720:(ow-iw)/2:(oh-ih)/2:color=black,setsar=1" \
        -c:v libx264 -preset "$SEED_PRESET" -crf "$SEED_CRF" -pix_fmt yuv420p "$scratch/seed-scaled.mp4"
    # 3. The watermark overlay as a second libx264 encode of the whole clip
    #    (same corner and margin as ours, so the quality figures compare alike).
    ffmpeg "${quiet[@]}" -i "$scratch/seed-scaled.mp4" -i "$watermark" \
        -filter_complex "[0:v][1:v]overlay=x=W-w-24:y=24" \
        -c:v libx264 -preset "$SEED_PRESET" -crf "$SEED_CRF" -pix_fmt yuv420p "$scratch/seed-marked.mp4"
    # 4. Opening bumper, footage, closing bumper through the concat demuxer,
    #    stream copy (the clips share codec, size and rate).
    printf "file '%s'\n" "$bumper" "$scratch/seed-marked.mp4" "$bumper" >"$scratch/seed-concat.txt"
    ffmpeg "${quiet[@]}" -f concat -safe 0 -i "$scratch/seed-concat.txt" -c copy "$output"
    rm -f "$scratch/seed-trimmed.mp4" "$scratch/seed-scaled.mp4" "$scratch/seed-marked.mp4" \
        "$scratch/seed-concat.txt"
}

# The seed's bumper clip: our bumper card (the artwork our pipeline draws), 2 s
# at 30 fps, converted to BT.709 4:2:0 as our pipeline converts it, encoded at
# the seed's settings so the concat demuxer can join it to the footage.
#   make_seed_bumper BUMPER_PNG OUTPUT
make_seed_bumper() {
    ffmpeg -hide_banner -loglevel error -nostdin -y -loop 1 -framerate 30 -t 2 -i "$1" \
        -vf "scale=out_color_matrix=bt709:out_range=tv,format=yuv420p,setsar=1" \
        -c:v libx264 -preset "$SEED_PRESET" -crf "$SEED_CRF" -pix_fmt yuv420p "$2"
}

# The seed's pipeline and its bumper clip as processes of their own, for GNU time to measure.
case "${1:-}" in
--seed-pipeline)
    shift
    seed_pipeline "$@"
    exit 0
    ;;
--seed-bumper)
    shift
    make_seed_bumper "$@"
    exit 0
    ;;
esac

QUICK=0
if [[ "${1:-}" == "--quick" ]]; then
    QUICK=1
    shift
fi
PAIRS="${1:-$((QUICK ? 1 : 3))}"
SETTINGS="${SETTINGS:-$( ((QUICK)) && echo ultrafast/28 || echo ultrafast/28 veryfast/23)}"
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SELF="$ROOT/anb-worker/benches/$(basename "$0")"
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

# Inputs as capacity/worker makes them (same names, so a shared WORK_DIR reuses them):
# "seconds mbit" per size; the quick input is 21 s (the minimum is 20) at 4 Mbit/s.
input_spec() {
    case "$1" in
    quick) echo "21 4" ;;
    50) echo "50 8" ;;
    100) echo "58 13.5" ;;
    *)
        echo "unknown input size $1 (50 or 100)" >&2
        exit 1
        ;;
    esac
}
make_input() { # seconds mbit path
    [[ -s "$3" ]] && return
    echo "generating $3..." >&2
    # A moving test card with temporal noise, so the encoders see camera-like motion.
    ffmpeg -hide_banner -loglevel error -nostdin -y \
        -f lavfi -i "testsrc2=size=1920x1080:rate=30:duration=$1,noise=alls=10:allf=t+u" \
        -pix_fmt yuv420p -c:v libx264 -preset veryfast \
        -b:v "$2M" -maxrate "$2M" -bufsize "$(awk -v m="$2" 'BEGIN { print 2 * m }')M" \
        -movflags +faststart "$3.partial.mp4"
    mv "$3.partial.mp4" "$3"
}

# Runs "$@" under GNU time; prints "wall_s peak_kib cpu_s" (CPU and peak memory
# include child processes: the largest of them for memory).
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

median() { # reads numbers, one a line
    sort -g | awk '{ v[NR] = $1 } END {
        if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
column_median() { awk -v c="$2" '{ print $c }' "$1" | median; }
ratio_median() { awk -v a="$2" -v b="$3" '{ print $a / $b }' "$1" | median; }
ratio_range() {
    awk -v a="$2" -v b="$3" 'NR == 1 { lo = hi = $a / $b } { r = $a / $b; if (r < lo) lo = r; if (r > hi) hi = r }
        END { printf "%.3f-%.3f", lo, hi }' "$1"
}

# "width height frames duration" of a file's video stream.
probe() {
    local size frames duration
    size=$(ffprobe -v error -select_streams v:0 -show_entries stream=width,height -of csv=p=0:s=x "$1" | tr x ' ')
    frames=$(ffprobe -v error -select_streams v:0 -count_packets -show_entries stream=nb_read_packets \
        -of csv=p=0 "$1")
    duration=$(ffprobe -v error -show_entries format=duration -of csv=p=0 "$1")
    echo "$size $frames $duration"
}

# "ssim psnr" of an output's game footage (after its 2 s opening bumper, KEPT
# seconds) against the source's first KEPT seconds scaled to 720p; SSIM is the
# "All" figure, PSNR the "average" one, in dB. The source is untagged (BT.601 to
# FFmpeg's scaler): for an output tagged BT.709, as ours is, the reference is
# converted to BT.709 as that output declares, so each output is measured
# against the source in its own colour space and only the losses of scaling and
# encoding count, not the choice of matrix. The watermark's corner counts
# against both outputs alike.
quality() { # output source kept
    local log="$WORK/quality.txt" colour="" ssim psnr
    if [[ "$(ffprobe -v error -select_streams v:0 -show_entries stream=color_space -of csv=p=0 "$1")" == bt709 ]]; then
        colour=":out_color_matrix=bt709:out_range=tv"
    fi
    ffmpeg -hide_banner -nostdin -i "$1" -i "$2" -lavfi \
        "[0:v]trim=start_frame=60:end_frame=$((60 + $3 * 30)),setpts=PTS-STARTPTS,split[a1][a2];\
[1:v]trim=end_frame=$(($3 * 30)),setpts=PTS-STARTPTS,scale=1280:720:flags=bicubic$colour,format=yuv420p,split[b1][b2];\
[a1][b1]ssim;[a2][b2]psnr" -f null - >"$log" 2>&1 || true
    ssim=$(sed -n 's/.*SSIM.* All:\([0-9.]*\).*/\1/p' "$log" | tail -1)
    psnr=$(sed -n 's/.*PSNR.* average:\([0-9.inf]*\).*/\1/p' "$log" | tail -1)
    echo "${ssim:-none} ${psnr:-none}"
}

FAILURES=0
fail() {
    echo "FAILED: $*" >&2
    FAILURES=$((FAILURES + 1))
}
# Checks an output: 1280x720, its duration within `tolerance` seconds of
# `expected`, SSIM above 0.95 and PSNR above 27 dB (parsed as numbers; footage
# one frame out of step with the source scores about 0.94 and 23 dB).
check_output() { # label probe quality expected tolerance
    local width height frames duration ssim psnr
    read -r width height frames duration <<<"$2"
    read -r ssim psnr <<<"$3"
    [[ "$width x $height" == "1280 x 720" ]] || fail "$1: ${width}x$height, not 1280x720"
    awk -v d="$duration" -v e="$4" -v t="$5" 'BEGIN { exit !(d >= e - t && d <= e + t) }' ||
        fail "$1: $duration s long ($frames frames), expected $4 s (within $5 s)"
    if ! [[ "$ssim" =~ ^[0-9.]+$ ]] || ! awk -v s="$ssim" 'BEGIN { exit !(s > 0.95) }'; then
        fail "$1: SSIM against the source '$ssim', expected a number above 0.95"
    fi
    if ! [[ "$psnr" =~ ^[0-9.]+$ ]] || ! awk -v p="$psnr" 'BEGIN { exit !(p > 27) }'; then
        fail "$1: PSNR against the source '$psnr', expected a number above 27 dB"
    fi
}

row() { # label pairs-file first-column output probe quality
    local width height frames duration ssim psnr
    read -r width height frames duration <<<"$5"
    read -r ssim psnr <<<"$6"
    printf '%-34s %10.2fs %10.2fs %8d KiB %13d %7s %8.2fs %8s %9s\n' "$1" "$(column_median "$2" "$3")" \
        "$(column_median "$2" $(($3 + 2)))" "$(column_median "$2" $(($3 + 1)))" "$(stat -c %s "$4")" \
        "$frames" "$duration" "$ssim" "$psnr" >>"$REPORT"
}

# The artwork our pipeline draws, and the seed's bumper clip made from it (timed
# once, apart: the seed had its bumper clips ready before any upload).
"$WORKER" export-art "$WORK/art" >/dev/null
bumper=$(measure "$SELF" --seed-bumper "$WORK/art/bumper.png" "$WORK/seed-bumper.mp4")

if ((QUICK)); then SIZES=quick; fi
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
REPORT="$WORK/report.txt"
: >"$REPORT"
for size in ${SIZES:-50 100}; do
    read -r seconds mbit <<<"$(input_spec "$size")"
    input="$WORK/plan-b-${seconds}s-${mbit}M.mp4"
    make_input "$seconds" "$mbit" "$input"
    kept=$((seconds < 30 ? seconds : 30))
    for setting in $SETTINGS; do : >"$WORK/pairs-$size-${setting/\//-}"; done
    # Pairs interleave the settings too: ours at each setting, each followed by the seed.
    for ((pair = 1; pair <= PAIRS; pair++)); do
        for setting in $SETTINGS; do
            preset="${setting%/*}" crf="${setting#*/}"
            echo "input $size: pair $pair/$PAIRS, ours at $preset/CRF $crf, then the seed" >&2
            ours=$(measure "$WORKER" transcode --quiet --preset "$preset" --crf "$crf" \
                --thumbnail "$WORK/ours.jpg" "$input" "$WORK/ours-$size-$preset-$crf.mp4")
            seed=$(measure "$SELF" --seed-pipeline "$input" "$WORK/seed-bumper.mp4" \
                "$WORK/art/watermark.png" "$WORK/seed-$size.mp4" "$WORK")
            # ours wall, rss, cpu, then the seed's
            echo "$ours $seed" >>"$WORK/pairs-$size-${setting/\//-}"
        done
    done

    echo "measuring quality (input $size)..." >&2
    seed_probe=$(probe "$WORK/seed-$size.mp4")
    seed_quality=$(quality "$WORK/seed-$size.mp4" "$input" "$kept")
    # The seed's copy cut ends on a packet: up to a few frames past the kept seconds.
    check_output "seed pipeline, input $size" "$seed_probe" "$seed_quality" "$((kept + 4))" 0.2
    {
        echo
        echo "input $size: ${seconds} s 1920x1080 30 fps at $mbit Mbit/s ($(stat -c %s "$input") bytes), first $kept s kept; $PAIRS alternating pair(s) per setting"
        printf '%-34s %11s %11s %12s %13s %7s %9s %8s %9s\n' "" "wall median" "CPU median" "peak RSS" "output bytes" \
            "frames" "duration" "SSIM" "PSNR dB"
    } >>"$REPORT"
    for setting in $SETTINGS; do
        preset="${setting%/*}" crf="${setting#*/}"
        pairs="$WORK/pairs-$size-${setting/\//-}"
        output="$WORK/ours-$size-$preset-$crf.mp4"
        ours_probe=$(probe "$output")
        ours_quality=$(quality "$output" "$input" "$kept")
        check_output "ours at $preset/CRF $crf, input $size" "$ours_probe" "$ours_quality" "$((kept + 4))" 0.001
        row "anb-worker transcode $preset/$crf" "$pairs" 1 "$output" "$ours_probe" "$ours_quality"
        row "seed pipeline $SEED_PRESET/$SEED_CRF (its pairs)" "$pairs" 4 "$WORK/seed-$size.mp4" "$seed_probe" \
            "$seed_quality"
        throughput=$(ratio_median "$pairs" 4 1)
        {
            printf '  ours / seed, median of pairs [range]: wall %.3f [%s], CPU %.3f [%s], peak memory %.3f [%s], output size %.3f\n' \
                "$(ratio_median "$pairs" 1 4)" "$(ratio_range "$pairs" 1 4)" "$(ratio_median "$pairs" 3 6)" \
                "$(ratio_range "$pairs" 3 6)" "$(ratio_median "$pairs" 2 5)" "$(ratio_range "$pairs" 2 5)" \
                "$(awk -v a="$(stat -c %s "$output")" -v b="$(stat -c %s "$WORK/seed-$size.mp4")" 'BEGIN { print a / b }')"
            printf '  throughput, ours over the seed (seed wall / ours wall), median of pairs [range]: %.2fx [%s]' \
                "$throughput" "$(ratio_range "$pairs" 4 1)"
            if [[ "$setting" == "$SEED_PRESET/$SEED_CRF" ]]; then
                if awk -v t="$throughput" 'BEGIN { exit !(t >= 2) }'; then
                    printf ' (aim at the seed'\''s settings: at least 2x; met)\n'
                else
                    printf ' (aim at the seed'\''s settings: at least 2x; NOT met)\n'
                fi
            else
                printf '\n'
            fi
            echo "  pairs (ours wall s, peak KiB, CPU s | seed wall s, peak KiB, CPU s):"
            awk '{ printf "    %s %s %s | %s %s %s\n", $1, $2, $3, $4, $5, $6 }' "$pairs"
        } >>"$REPORT"
    done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

echo
echo "anb-worker transcode against the seed system's pipeline (reconstructed: copy trim, scale+pad encode, watermark encode, concat demuxer; x264 $SEED_PRESET, CRF $SEED_CRF) on $(nproc) CPUs"
echo "load average (1, 5, 15 min) before: $LOAD_BEFORE; after: $LOAD_AFTER"
read -r bumper_wall _ bumper_cpu <<<"$bumper"
echo "the seed's bumper clip, made once beforehand (not in its figures): ${bumper_wall} s wall, ${bumper_cpu} s CPU"
echo "quality: the game footage after the 2 s opening against the source scaled to 720p in the output's colour space (ffmpeg ssim All, psnr average)"
cat "$REPORT"
echo "files in $WORK"
if ((FAILURES)); then
    echo "$FAILURES check(s) failed" >&2
    exit 1
fi
