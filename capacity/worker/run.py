#!/usr/bin/env python3
"""Capacity of the worker tier by the course's method ("Plan B"), on this machine.

Starts `anb-api` (without a worker) on a scratch PostgreSQL database with local storage and the SQL queue in the
same database, then, for each input size and number of jobs at once:

- saturation: a backlog of uploads is queued first, then one `anb-worker` with that concurrency drains it;
  videos per minute = backlog / time to drain it, mean service time = the worker's own encode seconds
  (`anb_worker_encode_seconds` from its /metrics), CPU seconds per video from /proc;
- sustained (the largest concurrency that met the saturation run): uploads arrive at 80 % of the measured
  saturation rate for a fixed time; the queue must not grow (the backlog at the end is compared with the start).

Then the preset/quality frontier: `anb-worker transcode` on the first input for each x264 preset and CRF, as many
at once as the machine has cores, videos per minute and the SSIM of the footage against the source scaled to
720p. Writes a report folder (summary.md, results.json, frontier.png). Traffic only to 127.0.0.1; every phase is
bounded in time; the scratch database and files are removed at the end, also on failure or Ctrl-C.
"""

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import cpu_seconds, die, free_port, http, machine_description, say, wait_until_ready  # noqa: E402

PASSWORD = "capacidad-del-worker-2026"
CORES = os.cpu_count() or 1


def upload(base, token, clip, title):
    """POST /api/videos/upload (multipart, streamed from the file); the answer's status."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\ncontent-disposition: form-data; name=\"title\"\r\n\r\n{title}\r\n"
        f"--{boundary}\r\ncontent-disposition: form-data; name=\"video_file\"; filename=\"clip.mp4\"\r\n"
        "content-type: video/mp4\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = clip.stat().st_size
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=120) as conn:
        conn.sendall(
            (
                f"POST /api/videos/upload HTTP/1.1\r\nhost: {host}\r\nauthorization: Bearer {token}\r\n"
                f"content-type: multipart/form-data; boundary={boundary}\r\n"
                f"content-length: {len(head) + size + len(tail)}\r\nconnection: close\r\n\r\n"
            ).encode()
            + head
        )
        with open(clip, "rb") as f:
            conn.sendfile(f)
        conn.sendall(tail)
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    match = re.match(rb"HTTP/1\.1 (\d+)", answer)
    status = int(match.group(1)) if match else 0
    if status != 201:
        say(f"upload answered {status}: {answer[-500:].decode(errors='replace')}")
    return status


def make_input(path, seconds, mbit):
    """A 1080p30 upload with moving detail and temporal grain at `mbit` Mbit/s, like a phone's."""
    if path.exists():
        return
    say(f"generating {path.name} (1920x1080, 30 fps, {seconds} s, {mbit} Mbit/s)")
    partial = path.with_suffix(".partial.mp4")
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
            "-i", f"testsrc2=size=1920x1080:rate=30:duration={seconds},noise=alls=10:allf=t+u",
            "-pix_fmt", "yuv420p", "-c:v", "libx264", "-preset", "veryfast",
            "-b:v", f"{mbit}M", "-maxrate", f"{mbit}M", "-bufsize", f"{2 * mbit}M",
            "-movflags", "+faststart", str(partial),
        ],
        check=True, timeout=1800,
    )
    partial.rename(path)


class Platform:
    """anb-api on a scratch PostgreSQL database, local storage, the SQL queue; workers started on demand."""

    def __init__(self, bin_dir, scratch, pg_url):
        self.bin_dir = bin_dir
        self.scratch = scratch
        self.pg_url = pg_url
        self.database = f"anb_worker_capacity_{os.getpid()}_{random.randrange(10**6)}"
        base, _, query = pg_url.partition("?")
        self.db_url = base.rsplit("/", 1)[0] + "/" + self.database + (f"?{query}" if query else "")
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.api = None
        self.worker = None
        (scratch / "tmp").mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ["PATH"],
            "TMPDIR": str(scratch / "tmp"),
            "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
            "ANB_DATABASE_URL": self.db_url,
            "ANB_QUEUE_URL": self.db_url,
            "ANB_STORAGE_URL": str(scratch / "media"),
            "ANB_JWT_SECRET": os.urandom(32).hex(),
            "ANB_HTTP_ADDR": f"127.0.0.1:{self.port}",
            "ANB_UPLOAD_RATE_PER_USER": "off",
            "ANB_UPLOAD_QUOTA_BYTES": "off",
            "ANB_UPLOAD_QUOTA_VIDEOS": "off",
        }

    def psql(self, sql, database_url=None):
        out = subprocess.run(
            ["psql", database_url or self.db_url, "-qAtX", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )
        return out.stdout.strip()

    def start(self):
        self.psql(f'CREATE DATABASE "{self.database}"', self.pg_url)
        log = open(self.scratch / "api.log", "ab")
        subprocess.run(
            [str(self.bin_dir / "anb-api"), "migrate"], env=self.env, cwd=self.scratch, check=True,
            stdout=log, stderr=log, timeout=120,
        )
        self.api = subprocess.Popen([str(self.bin_dir / "anb-api")], env=self.env, cwd=self.scratch,
                                    stdout=log, stderr=log)
        wait_until_ready(self.api, self.base, self.scratch / "api.log", "anb-api")
        email = f"plan-b-{os.getpid()}@carga.test"
        status, body = http("POST", f"{self.base}/api/auth/signup", {
            "first_name": "Plan", "last_name": "Be", "email": email, "password1": PASSWORD,
            "password2": PASSWORD, "city": "Bogotá", "country": "Colombia",
        })
        if status != 201:
            die(f"sign-up answered {status}: {body}")
        status, body = http("POST", f"{self.base}/api/auth/login", {"email": email, "password": PASSWORD})
        if status != 200:
            die(f"log-in answered {status}: {body}")
        self.token = body["access_token"]

    def start_worker(self, concurrency, preset, crf):
        self.metrics_port = free_port()
        env = dict(self.env, ANB_WORKER_CONCURRENCY=str(concurrency), ANB_X264_PRESET=preset,
                   ANB_X264_CRF=str(crf), ANB_WORKER_METRICS_ADDR=f"127.0.0.1:{self.metrics_port}",
                   ANB_WORKER_PURGE_INTERVAL="0", ANB_WORKER_RECONCILE_INTERVAL="0")
        env.pop("ANB_HTTP_ADDR")
        log = open(self.scratch / "worker.log", "ab")
        self.worker = subprocess.Popen([str(self.bin_dir / "anb-worker"), "run"], env=env, cwd=self.scratch,
                                       stdout=log, stderr=log)
        return self.worker

    def worker_metrics(self):
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as response:
            text = response.read().decode()

        def value(name):
            match = re.search(rf"^{re.escape(name)}(?:{{[^}}]*}})? ([0-9.eE+-]+)$", text, re.M)
            return float(match.group(1)) if match else 0.0

        return value("anb_worker_encode_seconds_sum"), value("anb_worker_encode_seconds_count")

    def stop_worker(self):
        if self.worker and self.worker.poll() is None:
            self.worker.send_signal(signal.SIGTERM)
            try:
                self.worker.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait()
        self.worker = None

    def counts(self):
        """Videos by status."""
        rows = self.psql("SELECT status, count(*) FROM videos WHERE deleted_at IS NULL GROUP BY status")
        return {status: int(n) for status, n in (line.split("|") for line in rows.splitlines() if line)}

    def clear_videos(self):
        """Removes the processed videos of a run (rows and files), so runs start alike and the disk does not fill."""
        self.psql("DELETE FROM votes; DELETE FROM player_rankings; DELETE FROM videos")
        # The stored objects go too, but not the storage's own work folder (".partial").
        media = self.scratch / "media"
        for child in media.iterdir() if media.is_dir() else []:
            if child.is_dir() and not child.name.startswith("."):
                shutil.rmtree(child, ignore_errors=True)

    def stop(self):
        self.stop_worker()
        if self.api and self.api.poll() is None:
            self.api.send_signal(signal.SIGTERM)
            try:
                self.api.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.api.kill()
                self.api.wait()
        subprocess.run(["psql", self.pg_url, "-qX", "-c", f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)


def saturation(platform, clip, size_label, concurrency, backlog, preset, crf, time_limit):
    say(f"saturation: {backlog} × {size_label}, {concurrency} at once, {preset}/CRF {crf}")
    platform.clear_videos()
    for n in range(backlog):
        status = upload(platform.base, platform.token, clip, f"Plan B {n}")
        if status != 201:
            die(f"upload answered {status}; anb-api's log: {(platform.scratch / 'api.log').read_text()[-3000:]}")
    worker = platform.start_worker(concurrency, preset, crf)
    started = time.time()
    deadline = started + time_limit
    while True:
        counts = platform.counts()
        done = counts.get("processed", 0) + counts.get("failed", 0)
        if done >= backlog:
            break
        if time.time() > deadline:
            break
        if worker.poll() is not None:
            die(f"anb-worker exited: {(platform.scratch / 'worker.log').read_text()[-2000:]}")
        time.sleep(0.5)
    elapsed = time.time() - started
    cpu = cpu_seconds(worker.pid)
    encode_sum, encode_count = platform.worker_metrics()
    platform.stop_worker()
    processed = counts.get("processed", 0)
    return {
        "size": size_label, "concurrency": concurrency, "preset": preset, "crf": crf, "backlog": backlog,
        "processed": processed, "failed": counts.get("failed", 0), "seconds": round(elapsed, 1),
        "videos_per_min": round(processed / elapsed * 60, 2),
        "mean_service_s": round(encode_sum / encode_count, 1) if encode_count else None,
        "cpu_s_per_video": round(cpu / processed, 1) if processed else None,
        "drained": done >= backlog,
    }


def sustained(platform, clip, size_label, concurrency, rate_per_min, seconds, preset, crf):
    say(f"sustained: {size_label} at {rate_per_min:.2f}/min for {seconds} s, {concurrency} at once")
    platform.clear_videos()
    platform.start_worker(concurrency, preset, crf)
    interval = 60.0 / rate_per_min
    started = time.time()
    sent, refused, backlog_samples = 0, 0, []
    next_at = started
    while time.time() - started < seconds:
        if time.time() >= next_at:
            status = upload(platform.base, platform.token, clip, f"Sostenido {sent}")
            sent += 1
            refused += status != 201
            next_at += interval
        counts = platform.counts()
        backlog_samples.append((round(time.time() - started, 1), counts.get("uploaded", 0)))
        time.sleep(min(1.0, max(0.0, next_at - time.time())))
    # Let the videos in flight finish (bounded), then read what was done.
    finish_by = time.time() + 600
    while time.time() < finish_by:
        counts = platform.counts()
        if counts.get("uploaded", 0) + counts.get("processing", 0) == 0:
            break
        time.sleep(1)
    encode_sum, encode_count = platform.worker_metrics()
    platform.stop_worker()
    half = len(backlog_samples) // 2
    first_half = max((b for _, b in backlog_samples[:half]), default=0)
    second_half = max((b for _, b in backlog_samples[half:]), default=0)
    return {
        "size": size_label, "concurrency": concurrency, "preset": preset, "crf": crf,
        "rate_per_min": round(rate_per_min, 2), "seconds": seconds, "sent": sent, "refused": refused,
        "processed": counts.get("processed", 0), "failed": counts.get("failed", 0),
        "mean_service_s": round(encode_sum / encode_count, 1) if encode_count else None,
        "max_queued_first_half": first_half, "max_queued_second_half": second_half,
        # The queue did not grow: the second half never held more waiting videos than the first, plus one.
        "stable": second_half <= first_half + 1 and counts.get("failed", 0) == 0,
        "samples": backlog_samples,
    }


def ssim_against_source(output, source, kept_seconds):
    """Mean SSIM of the output's footage (after its 2 s opening) against the source scaled to 720p."""
    graph = (
        f"[0:v]trim=start=2:duration={kept_seconds},setpts=PTS-STARTPTS[a];"
        f"[1:v]trim=duration={kept_seconds},setpts=PTS-STARTPTS,fps=30,"
        "scale=1280:720:flags=bicubic,format=yuv420p[b];[a][b]ssim"
    )
    out = subprocess.run(
        ["ffmpeg", "-hide_banner", "-nostdin", "-i", str(output), "-i", str(source), "-filter_complex", graph,
         "-f", "null", "-"], capture_output=True, text=True, timeout=600,
    )
    match = re.findall(r"SSIM .* All:([0-9.]+)", out.stderr)
    return float(match[-1]) if match else None


def frontier(bin_dir, clip, work, presets, crfs, kept_seconds, quiet_env):
    rows = []
    for preset in presets:
        for crf in crfs:
            say(f"frontier: {preset}/CRF {crf}, {CORES} at once")
            outputs = [work / f"frontier-{preset}-{crf}-{n}.mp4" for n in range(CORES)]
            started = time.time()
            procs = [
                subprocess.Popen([str(bin_dir / "anb-worker"), "transcode", "--quiet", "--preset", preset,
                                  "--crf", str(crf), str(clip), str(out)], env=quiet_env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                for out in outputs
            ]
            for proc in procs:
                _, err = proc.communicate(timeout=1800)
                if proc.returncode != 0:
                    die(f"anb-worker transcode failed: {err.decode()[-2000:]}")
            elapsed = time.time() - started
            size = outputs[0].stat().st_size
            rows.append({
                "preset": preset, "crf": crf, "videos_per_min": round(CORES / elapsed * 60, 2),
                "seconds_per_video": round(elapsed / CORES, 1) if CORES else None,
                "output_bytes": size, "ssim": ssim_against_source(outputs[0], clip, kept_seconds),
            })
            for out in outputs:
                out.unlink(missing_ok=True)
    return rows


def plot_frontier(rows, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        say("matplotlib missing: no frontier plot")
        return False
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for crf in sorted({r["crf"] for r in rows}):
        pts = [r for r in rows if r["crf"] == crf and r["ssim"] is not None]
        ax.plot([r["videos_per_min"] for r in pts], [r["ssim"] for r in pts], marker="o", label=f"CRF {crf}")
        for r in pts:
            ax.annotate(r["preset"], (r["videos_per_min"], r["ssim"]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points")
    ax.set_xlabel(f"videos per minute ({CORES} cores, {CORES} transcodes at once)")
    ax.set_ylabel("SSIM of the footage vs the source at 720p")
    ax.set_title("x264 preset / quality frontier of anb-worker")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    return True


def table(rows, columns):
    lines = ["| " + " | ".join(c for c, _ in columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(str(r.get(k)) for _, k in columns) + " |")
    return "\n".join(lines)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="one small input, a backlog of 1, a 15 s sustained run, one preset (ultrafast): checks the harness")
    p.add_argument("--bin-dir", type=Path, required=True, help="directory holding anb-api and anb-worker")
    p.add_argument("--sizes", default="50,100", help="input sizes in MB (each a 1080p30 clip under the limit)")
    p.add_argument("--concurrency", default="1,2,4", help="jobs at once in the one worker")
    p.add_argument("--backlog", type=int, default=12, help="videos queued before a saturation run")
    p.add_argument("--sustained-seconds", type=int, default=300)
    p.add_argument("--preset", default="veryfast")
    p.add_argument("--crf", type=int, default=23)
    p.add_argument("--frontier-presets", default="ultrafast,superfast,veryfast,faster,fast,medium")
    p.add_argument("--frontier-crfs", default="23,28")
    p.add_argument("--time-limit", type=int, default=1800, help="seconds a saturation run may take at most")
    p.add_argument("--work", type=Path, help="where inputs are generated and kept between runs")
    p.add_argument("--out", type=Path, help="report folder (default capacity/worker/results/<date>)")
    p.add_argument("--pg-url", default=os.environ.get("ANB_TEST_POSTGRES_URL",
                                                       "postgres://postgres:postgres@127.0.0.1:5432/postgres"))
    return p.parse_args()


def main():
    args = parse_args()
    args.bin_dir = args.bin_dir.resolve()
    for tool in ("ffmpeg", "psql"):
        if not shutil.which(tool):
            die(f"needs {tool} (apt-get install ffmpeg postgresql-client)")
    for binary in ("anb-api", "anb-worker"):
        if not (args.bin_dir / binary).is_file():
            die(f"no {binary} in {args.bin_dir}")
    here = Path(__file__).resolve().parent
    stamp = time.strftime("%Y%m%d-%H%M")
    out = args.out or here / "results" / (f"quick-{stamp}" if args.quick else stamp)
    scratch = Path(tempfile.mkdtemp(prefix="anb-worker-capacity."))
    work = args.work or scratch
    work.mkdir(parents=True, exist_ok=True)
    if args.quick:
        # 21 s (the minimum is 20) at 4 Mbit/s: about 10 MB.
        inputs = [("10 MB", work / "plan-b-21s-4M.mp4", 21, 4)]
        concurrency, backlog, sustained_s = [1], 1, 15
        presets, crfs = ["ultrafast"], [28]
        args.preset, args.crf = "ultrafast", 28
    else:
        # 50 MB: 50 s at 8 Mbit/s; 100 MB: 58 s at 13.5 Mbit/s (just under the 100 MiB limit).
        specs = {50: (50, 8), 100: (58, 13.5)}
        inputs = [(f"{mb} MB", work / f"plan-b-{specs[mb][0]}s-{specs[mb][1]}M.mp4", *specs[mb])
                  for mb in (int(s) for s in args.sizes.split(","))]
        concurrency = [int(c) for c in args.concurrency.split(",")]
        backlog, sustained_s = args.backlog, args.sustained_seconds
        presets, crfs = args.frontier_presets.split(","), [int(c) for c in args.frontier_crfs.split(",")]
    platform = Platform(args.bin_dir, scratch, args.pg_url)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(signum)

    signal.signal(signal.SIGTERM, on_signal)
    load_start = os.getloadavg()
    try:
        for _, path, seconds, mbit in inputs:
            make_input(path, seconds, mbit)
        platform.start()
        saturation_rows = []
        for label, path, _, _ in inputs:
            for c in concurrency:
                saturation_rows.append(saturation(platform, path, label, c, backlog, args.preset, args.crf,
                                                  args.time_limit))
        first = [r for r in saturation_rows if r["size"] == inputs[0][0] and r["drained"]]
        best = max(first, key=lambda r: r["videos_per_min"]) if first else None
        sustained_row = None
        if best:
            sustained_row = sustained(platform, inputs[0][1], inputs[0][0], best["concurrency"],
                                      max(best["videos_per_min"] * 0.8, 0.5), sustained_s, args.preset, args.crf)
        quiet_env = dict(platform.env, RUST_LOG="error")
        frontier_rows = frontier(args.bin_dir, inputs[0][1], scratch, presets, crfs,
                                 min(inputs[0][2], 30), quiet_env)
    except KeyboardInterrupt:
        die("interrupted")
    finally:
        platform.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    load_end = os.getloadavg()

    out.mkdir(parents=True, exist_ok=True)
    described = machine_description()
    machine = f"{described['cores']} cores ({described['cpu']}), {described['memory_gib']} GiB"
    results = {"machine": described, "load_start": load_start, "load_end": load_end,
               "command": " ".join(sys.argv), "saturation": saturation_rows, "sustained": sustained_row,
               "frontier": frontier_rows}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    plotted = plot_frontier(frontier_rows, out / "frontier.png")
    summary = [
        "# Worker capacity (Plan B)", "",
        f"Machine: {machine}; load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end.",
        f"Command: `{' '.join(['capacity/worker/run'] + sys.argv[1:])}`", "",
        f"## Saturation (a backlog of {backlog} queued, then one worker drains it; x264 {args.preset}, CRF {args.crf})",
        "",
        table(saturation_rows, [("input", "size"), ("jobs at once", "concurrency"), ("processed", "processed"),
                                ("failed", "failed"), ("seconds", "seconds"), ("videos/min", "videos_per_min"),
                                ("mean service s", "mean_service_s"), ("CPU s/video", "cpu_s_per_video")]),
        "",
    ]
    if sustained_row:
        summary += [
            "## Sustained (uploads at 80 % of the best saturation rate)", "",
            table([sustained_row], [("input", "size"), ("jobs at once", "concurrency"),
                                    ("arrivals/min", "rate_per_min"), ("seconds", "seconds"), ("sent", "sent"),
                                    ("processed", "processed"), ("failed", "failed"),
                                    ("mean service s", "mean_service_s"),
                                    ("max queued, 1st half", "max_queued_first_half"),
                                    ("max queued, 2nd half", "max_queued_second_half"), ("stable", "stable")]),
            "",
        ]
    summary += [
        f"## Preset / quality frontier ({inputs[0][0]} input, {CORES} transcodes at once)", "",
        table(frontier_rows, [("preset", "preset"), ("CRF", "crf"), ("videos/min", "videos_per_min"),
                              ("s/video", "seconds_per_video"), ("output bytes", "output_bytes"),
                              ("SSIM", "ssim")]),
        "",
    ]
    if plotted:
        summary += ["![frontier](frontier.png)", ""]
    (out / "summary.md").write_text("\n".join(summary))
    print("\n".join(summary))
    failures = [r for r in saturation_rows if r["failed"] or not r["drained"]]
    if failures or (sustained_row and not sustained_row["stable"]):
        die(f"a run failed videos, did not drain, or let the queue grow; see {out / 'summary.md'}")
    say(f"report: {out}")


if __name__ == "__main__":
    main()
