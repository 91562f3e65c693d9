"""Capacity of the web tier (the worker left out), by the course's method.

Starts the platform itself on 127.0.0.1 (the embedded default `anb serve
--no-worker`, or `anb-api` on a scratch PostgreSQL database with local
storage), seeds players with published videos, then for a scenario runs:
smoke (5 users x 1 min), ramps 0 -> X users in 3 min held 5 min for X = 100,
200, 300... until a step misses the goal (p95 <= 1 s, avoidable errors <= 5 %,
no resets or timeouts), and 5 min at 80 % of the last good X. Writes a report
folder (summary.md, plots, CSV) per scenario. See capacity/README.md.
"""

import argparse
import csv
import math
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import die, free_port, http, machine_description, say, stop_process, wait_until_ready

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "capacity"
PASSWORD = "carga-de-prueba-2026"
TEMPLATE_EMAIL = "plantilla@carga.test"
CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_MIB = os.sysconf("SC_PAGE_SIZE") / 1048576
GOAL_P95_MS = 1000.0
GOAL_ERRORS = 0.05
SCENARIOS = ("upload", "journey", "read")
USER_CLASS = {"upload": "Uploader", "journey": "Fan", "read": "Reader"}
# Locust processes (set from --generator-processes): one is one core at most.
GENERATOR_PROCESSES = 1


# --- processes and /proc --------------------------------------------------------------------


def proc_ticks(pid):
    """utime + stime of a process and its waited-for children, in ticks."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15])
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def proc_rss_mib(pid):
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE_MIB
    except FileNotFoundError:
        return None


def proc_io(pid):
    """(read_bytes, write_bytes) the process caused on the block layer."""
    try:
        values = {}
        with open(f"/proc/{pid}/io") as f:
            for line in f:
                key, value = line.split(":")
                values[key] = int(value)
        return values["read_bytes"], values["write_bytes"]
    except (FileNotFoundError, PermissionError, KeyError):
        return None


def process_table():
    """pid -> (ppid, comm, utime + stime ticks) of every process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                head, tail = f.read().rsplit(")", 1)
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
        fields = tail.split()
        table[int(entry)] = (int(fields[1]), head.split("(", 1)[1], int(fields[11]) + int(fields[12]))
    return table


def tree_ticks(table, root):
    """CPU ticks of a process and its descendants (Locust with --processes forks)."""
    if root not in table:
        return None
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += table[pid][2]
        stack.extend(children.get(pid, ()))
    return total


def postgres_ticks(table):
    """CPU ticks of every PostgreSQL process (the server is shared: all databases)."""
    return sum(ticks for _, comm, ticks in table.values() if comm == "postgres")


def machine_ticks():
    """(busy, total) ticks of all CPUs."""
    with open("/proc/stat") as f:
        values = [int(x) for x in f.readline().split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


class Sampler(threading.Thread):
    """Every second: CPU (% of one core) of the server, the generator and
    PostgreSQL, the machine's busy CPU, the server's memory and disk I/O."""

    def __init__(self, server_pid, with_postgres):
        super().__init__(daemon=True)
        self.server_pid = server_pid
        self.with_postgres = with_postgres
        self.generator_pid = None
        self.rows = []
        self.stop = threading.Event()

    def run(self):
        cores = os.cpu_count()
        last = None
        while not self.stop.is_set():
            now = time.time()
            gen = self.generator_pid
            table = process_table()
            sample = {
                "t": now,
                "server": proc_ticks(self.server_pid),
                "generator": tree_ticks(table, gen) if gen else None,
                "generator_pid": gen,
                "postgres": postgres_ticks(table) if self.with_postgres else 0,
                "machine": machine_ticks(),
                "io": proc_io(self.server_pid),
                "rss": proc_rss_mib(self.server_pid),
            }
            if last is not None:
                dt = now - last["t"]
                busy = sample["machine"][0] - last["machine"][0]
                total = sample["machine"][1] - last["machine"][1]

                def pct(key):
                    if sample[key] is None or last[key] is None:
                        return 0.0
                    if key == "generator" and sample["generator_pid"] != last["generator_pid"]:
                        return 0.0
                    return max(0.0, (sample[key] - last[key]) / CLK_TCK / dt * 100)

                io_now, io_last = sample["io"], last["io"]
                self.rows.append(
                    {
                        "t": now,
                        "server_cpu": pct("server"),
                        "generator_cpu": pct("generator"),
                        "postgres_cpu": pct("postgres"),
                        "machine_cpu": busy / total * 100 * cores if total else 0.0,
                        "server_rss_mib": sample["rss"] or 0.0,
                        "disk_read_mib_s": (io_now[0] - io_last[0]) / dt / 1048576 if io_now and io_last else 0.0,
                        "disk_write_mib_s": (io_now[1] - io_last[1]) / dt / 1048576 if io_now and io_last else 0.0,
                    }
                )
            last = sample
            self.stop.wait(1.0)


# --- the platform -------------------------------------------------------------------------------------


class Platform:
    """The server under test, its scratch data, and how to seed it."""

    def __init__(self, kind, binary, scratch, pg_url):
        self.kind = kind
        self.binary = binary
        self.scratch = scratch
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.pg_url = pg_url
        self.database = None
        self.process = None
        self.log = open(scratch / "server.log", "wb")
        # Rate limits are configured for the run, not fought: each virtual user
        # is its own client address (X-Forwarded-For from 127.0.0.1 is trusted),
        # so the per-IP limits of logins, sign-ups and votes keep their
        # defaults and apply per person; the per-player upload rate and quota
        # are off because the upload scenario uploads every few seconds.
        self.env = {
            "PATH": os.environ["PATH"],
            "TMPDIR": str(scratch / "tmp"),
            "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
            "ANB_TRUSTED_PROXIES": "127.0.0.1",
            "ANB_UPLOAD_RATE_PER_USER": "off",
            "ANB_UPLOAD_QUOTA_BYTES": "off",
            "ANB_UPLOAD_QUOTA_VIDEOS": "off",
        }
        (scratch / "tmp").mkdir(parents=True, exist_ok=True)

    def start(self):
        if self.kind == "embedded":
            args = [
                str(self.binary), "serve", "--no-worker",
                "--addr", f"127.0.0.1:{self.port}", "--data-dir", str(self.scratch / "data"),
            ]
        else:
            self.database = f"anb_capacity_{os.getpid()}_{random.randrange(10**6)}"
            subprocess.run(
                ["psql", self.pg_url, "-qX", "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{self.database}"'],
                check=True, stdout=subprocess.DEVNULL,
            )
            base, _, query = self.pg_url.partition("?")
            self.db_url = base.rsplit("/", 1)[0] + "/" + self.database + (f"?{query}" if query else "")
            self.env.update(
                {
                    "ANB_DATABASE_URL": self.db_url,
                    "ANB_QUEUE_URL": self.db_url,
                    "ANB_STORAGE_URL": str(self.scratch / "media"),
                    "ANB_JWT_SECRET": os.urandom(32).hex(),
                    "ANB_HTTP_ADDR": f"127.0.0.1:{self.port}",
                }
            )
            subprocess.run(
                [str(self.binary), "migrate"], env=self.env, cwd=self.scratch, check=True,
                stdout=self.log, stderr=self.log, timeout=120,
            )
            args = [str(self.binary)]
        self.process = subprocess.Popen(args, env=self.env, cwd=self.scratch, stdout=self.log, stderr=self.log)
        wait_until_ready(self.process, self.base, self.scratch / "server.log", "the server")

    def stop(self):
        stop_process(self.process, grace=15)
        if self.database:
            subprocess.run(
                ["psql", self.pg_url, "-qX", "-c", f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)'],
                stdout=subprocess.DEVNULL,
            )
            self.database = None

    def seed(self, players):
        """`players` players (jugadorN@carga.test) with a published video each
        and a few votes, the ranking aggregate kept as the vote path keeps it.
        Every one gets the password hash of a player signed up through the API:
        argon2 for each would take minutes."""
        status, body = http(
            "POST", f"{self.base}/api/auth/signup",
            {
                "first_name": "Plantilla", "last_name": "Carga", "email": TEMPLATE_EMAIL,
                "password1": PASSWORD, "password2": PASSWORD, "city": "Bogotá", "country": "Colombia",
            },
        )
        if status != 201:
            die(f"the template sign-up answered {status}: {body}")
        if self.kind == "postgres":
            subprocess.run(
                [
                    "psql", self.db_url, "-qX", "-v", "ON_ERROR_STOP=1", "-v", f"players={players}",
                    "-v", f"votes={players * 3}", "-v", f"template_email={TEMPLATE_EMAIL}",
                    "-f", str(ROOT / "anb-api/benches/load/seed.sql"),
                ],
                check=True, stdout=subprocess.DEVNULL, timeout=600,
            )
        else:
            seed_sqlite(self.scratch / "data" / "anb.db", players)
        status, videos = http("GET", f"{self.base}/api/public/videos?limit=100")
        status_r, ranking = http("GET", f"{self.base}/api/public/rankings?limit=1")
        if status != 200 or len(videos) < min(100, players) or status_r != 200 or not ranking:
            die(f"the seed is not visible through the API: {status} {str(videos)[:200]} {status_r} {ranking}")
        return len(videos)


CITIES = [
    ("Bogotá", "bogota"), ("Medellín", "medellin"), ("Cali", "cali"), ("Barranquilla", "barranquilla"),
    ("Cartagena", "cartagena"), ("Cúcuta", "cucuta"), ("Bucaramanga", "bucaramanga"), ("Santa Marta", "santa marta"),
]


def uuid7(ms, rng):
    """A version 7 UUID (time-ordered, like the application's ids) as 16 bytes."""
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rng.getrandbits(12) << 64 | 0b10 << 62 | rng.getrandbits(62)
    return value.to_bytes(16, "big")


def seed_sqlite(path, players):
    """The embedded database's seed (what seed.sql does on PostgreSQL)."""
    rng = random.Random(2026)
    db = sqlite3.connect(path, timeout=30)
    (password_hash,) = db.execute("SELECT password_hash FROM users WHERE email = ?", (TEMPLATE_EMAIL,)).fetchone()
    start_ms = int((time.time() - 60 * 86400) * 1000)
    users, videos = [], []
    for i in range(1, players + 1):
        ms = start_ms + i * 1000
        city, key = CITIES[min(7, int(8 * rng.random() ** 1.6))]
        user_id = uuid7(ms, rng)
        video_id = uuid7(ms + 3600_000, rng)
        users.append((user_id, f"jugador{i}@carga.test", password_hash, "Jugador", f"Carga {i}", city, key,
                      "Colombia", ms * 1000))
        at = (ms + 3600_000) * 1000
        videos.append((video_id, user_id, f"Jugada del jugador {i}", "processed", None, 100, 1, at,
                       at + 300_000_000, at + 300_000_000, None, f"videos/{video_id.hex()}/original.mp4",
                       f"videos/{video_id.hex()}/processed.mp4", f"videos/{video_id.hex()}/thumbnail.jpg", 0))
    votes = {}
    for _ in range(players * 3):
        voter = rng.randrange(players)
        video = int(rng.random() ** 2 * players)
        if voter != video:
            votes[(voter, video)] = None
    counts = [0] * players
    for _, video in votes:
        counts[video] += 1
    with db:
        db.executemany("INSERT INTO users (id, email, password_hash, first_name, last_name, city, city_key, "
                       "country, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", users)
        db.executemany("INSERT INTO videos (id, owner_id, title, status, failure_reason, progress_percent, "
                       "is_public, uploaded_at, processed_at, published_at, deleted_at, original_key, "
                       "processed_key, thumbnail_key, vote_count) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                       [v[:14] + (counts[n],) for n, v in enumerate(videos)])
        now_us = int(time.time() * 1e6)
        db.executemany("INSERT INTO votes (user_id, video_id, cast_at) VALUES (?, ?, ?)",
                       [(users[voter][0], videos[video][0], now_us) for voter, video in votes])
        db.executemany("INSERT INTO player_rankings (player_id, city_key, votes, published_videos) "
                       "VALUES (?, ?, ?, 1)", [(u[0], u[6], counts[n]) for n, u in enumerate(users)])
        db.execute("DELETE FROM users WHERE email = ?", (TEMPLATE_EMAIL,))
    db.close()


def make_clip(path, seconds):
    """A valid 1080p upload of about 1.3 MB: a low bitrate keeps a run's uploads small."""
    if path.exists():
        return
    say(f"generating the upload clip (1920x1080, {seconds} s, ~500 kbit/s)")
    partial = path.with_suffix(".partial.mp4")
    subprocess.run(
        [
            "ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
            "-i", f"testsrc2=size=1920x1080:rate=15:duration={seconds}", "-pix_fmt", "yuv420p",
            "-c:v", "libx264", "-preset", "ultrafast", "-b:v", "500k", "-maxrate", "500k", "-bufsize", "1M",
            "-movflags", "+faststart", str(partial),
        ],
        check=True, timeout=300,
    )
    partial.rename(path)


# --- one phase: Locust at a number of users -------------------------------------------------------------


def percentile(sorted_values, q):
    if not sorted_values:
        return 0.0
    k = (len(sorted_values) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def read_requests(path):
    rows = []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rows.append((float(row["t"]), row["name"], float(row["ms"]), int(row["status"]), row["error"],
                         int(row["avoidable"])))
    return rows


def kpis(rows, seconds):
    times = sorted(r[2] for r in rows)
    errors = sum(r[5] for r in rows)
    return {
        "requests": len(rows),
        "rps": len(rows) / seconds if seconds > 0 else 0.0,
        "p50": percentile(times, 0.50),
        "p95": percentile(times, 0.95),
        "p99": percentile(times, 0.99),
        "errors": errors,
        "error_rate": errors / len(rows) if rows else 0.0,
        "resets": sum(1 for r in rows if r[4] == "reset"),
        "timeouts": sum(1 for r in rows if r[4] == "timeout"),
        "s5xx": sum(1 for r in rows if r[3] >= 500),
        "s4xx": sum(1 for r in rows if 400 <= r[3] < 500 and r[5]),
    }


def meets_goal(k):
    return k["requests"] > 0 and k["p95"] <= GOAL_P95_MS and k["error_rate"] <= GOAL_ERRORS \
        and k["resets"] == 0 and k["timeouts"] == 0


def first_degraded(rows, start, users_log):
    """The first 10 s window of the phase in which a KPI missed its goal:
    (kpi, seconds into the phase, users then) or None."""
    if not rows:
        return None
    end = max(r[0] for r in rows)
    t = start
    while t < end:
        window = [r for r in rows if t <= r[0] < t + 10]
        if window:
            k = kpis(window, 10)
            users = users_at(users_log, t + 10)
            if k["resets"] or k["timeouts"]:
                return ("resets/timeouts", t - start, users)
            if k["p95"] > GOAL_P95_MS:
                return ("p95 latency", t - start, users)
            if k["error_rate"] > GOAL_ERRORS:
                return ("error rate", t - start, users)
        t += 10
    return None


def users_at(users_log, t):
    users = 0
    for at, n in users_log:
        if at > t:
            break
        users = n
    return users


class Phase:
    def __init__(self, label, users, ramp, hold):
        self.label, self.users, self.ramp, self.hold = label, users, ramp, hold


def run_phase(scenario, phase, platform_, sampler, work, players, public, clip, tag):
    say(f"{scenario}: {phase.label} — 0 -> {phase.users} users in {phase.ramp:g} s, held {phase.hold:g} s")
    requests_csv = work / f"{tag}-requests.csv"
    users_csv = work / f"{tag}-users.csv"
    env = dict(os.environ)
    env.update(
        {
            "ANB_CAP_SCENARIO": scenario, "ANB_CAP_REQUESTS": str(requests_csv), "ANB_CAP_USERS_LOG": str(users_csv),
            "ANB_CAP_TAG": f"{tag}-{os.getpid()}", "ANB_CAP_PASSWORD": PASSWORD, "ANB_CAP_PLAYERS": str(players),
            "ANB_CAP_PUBLIC": str(public), "ANB_CAP_CLIP": str(clip),
        }
    )
    rate = phase.users / phase.ramp if phase.ramp > 0 else phase.users
    locust = Path(sys.executable).parent / "locust"
    started = time.time()
    process = subprocess.Popen(
        [
            str(locust), "-f", str(HERE / "locustfile.py"), "--headless", "--host", platform_.base,
            "-u", str(phase.users), "-r", f"{rate:.4f}", "-t", f"{int(math.ceil(phase.ramp + phase.hold))}s",
            "--stop-timeout", "2", "--only-summary", "--loglevel", "WARNING", "--skip-log-setup",
            *(["--processes", str(GENERATOR_PROCESSES)] if GENERATOR_PROCESSES > 1 else []),
            USER_CLASS[scenario],
        ],
        env=env, cwd=work, stdout=open(work / f"{tag}-locust.log", "wb"), stderr=subprocess.STDOUT,
    )
    sampler.generator_pid = process.pid
    try:
        process.wait(timeout=phase.ramp + phase.hold + 120)
    except subprocess.TimeoutExpired:
        process.kill()
        die(f"locust did not stop on time ({tag})")
    finally:
        sampler.generator_pid = None
    ended = time.time()
    if platform_.process.poll() is not None:
        die(f"the server exited during {tag}: {(platform_.scratch / 'server.log').read_text()[-2000:]}")
    parts = sorted(work.glob(f"{tag}-requests.csv.*"))
    if not parts:
        die(f"locust wrote no requests ({tag}): {(work / f'{tag}-locust.log').read_text()[-2000:]}")
    rows = sorted((row for part in parts for row in read_requests(part)), key=lambda r: r[0])
    users_log = []
    if users_csv.exists():
        for line in users_csv.read_text().splitlines():
            at, n = line.split(",")
            users_log.append((float(at), int(n)))
    # The hold: from the moment every user runs to the end.
    hold_start = next((at for at, n in users_log if n >= phase.users), ended - phase.hold)
    hold_rows = [r for r in rows if r[0] >= hold_start]
    hold_seconds = max(1.0, (max((r[0] for r in hold_rows), default=ended)) - hold_start)
    k = kpis(hold_rows, hold_seconds)
    samples = [s for s in sampler.rows if hold_start <= s["t"] <= ended]

    def mean(key):
        return statistics.fmean(s[key] for s in samples) if samples else 0.0

    by_name = {}
    for name in sorted({r[1] for r in hold_rows}):
        by_name[name] = kpis([r for r in hold_rows if r[1] == name], hold_seconds)
    result = {
        "label": phase.label, "users": phase.users, "ramp_s": phase.ramp, "hold_s": phase.hold, "tag": tag,
        "started": started, "hold_start": hold_start, "ended": ended, **k,
        "reached": max((n for _, n in users_log), default=0),
        "ok": meets_goal(k), "first_degraded": first_degraded(rows, started, users_log),
        "server_cpu": mean("server_cpu"), "server_cpu_max": max((s["server_cpu"] for s in samples), default=0),
        "generator_cpu": mean("generator_cpu"), "postgres_cpu": mean("postgres_cpu"),
        "machine_cpu": mean("machine_cpu"),
        "server_rss_max": max((s["server_rss_mib"] for s in samples), default=0),
        "disk_write": mean("disk_write_mib_s"), "disk_read": mean("disk_read_mib_s"),
        "by_name": by_name, "all_rows": rows, "users_log": users_log,
    }
    say(
        f"{scenario} {phase.label}: {k['requests']} requests, {k['rps']:.1f} req/s, p95 {k['p95']:.0f} ms, "
        f"errors {k['error_rate'] * 100:.2f} % ({k['s5xx']} 5xx, {k['s4xx']} avoidable 4xx, {k['resets']} resets, "
        f"{k['timeouts']} timeouts); server CPU {result['server_cpu']:.0f} %, generator {result['generator_cpu']:.0f} %"
        f" -> {'meets the goal' if result['ok'] else 'MISSES the goal'}"
    )
    return result


# --- the report --------------------------------------------------------------------------------------------


def bottleneck(result, cores):
    """A reading of where the time went in a phase, from the samples."""
    total = cores * 100
    parts = (
        f"machine CPU {result['machine_cpu']:.0f} % of {total} % (server {result['server_cpu']:.0f} %, "
        f"load generator {result['generator_cpu']:.0f} %, PostgreSQL {result['postgres_cpu']:.0f} %, "
        f"everything else {max(0.0, result['machine_cpu'] - result['server_cpu'] - result['generator_cpu'] - result['postgres_cpu']):.0f} %)"
        f"; server memory peak {result['server_rss_max']:.0f} MiB; server disk writes {result['disk_write']:.1f} MiB/s"
    )
    slowest = max(result["by_name"].items(), key=lambda kv: kv[1]["p95"], default=None)
    if slowest:
        parts += f"; slowest request {slowest[0]} (p95 {slowest[1]['p95']:.0f} ms)"
    sheds = sum(v["s5xx"] for v in result["by_name"].values())
    if sheds:
        parts += f"; {sheds} answers 5xx"
    if result["generator_cpu"] >= 90:
        verdict = "the load generator's core (Locust is one process, one core) is saturated"
    elif result["machine_cpu"] >= 0.9 * total:
        verdict = "CPU: the machine's cores are saturated"
    else:
        verdict = "not CPU-bound on the whole machine: a queue inside the server (see the slowest request)"
    return verdict, parts


def plot(report, scenario, results, samples, t0):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [r for r in results if r["label"].startswith("X=")]
    points = steps or results
    fig, ax = plt.subplots(figsize=(8, 4.5))
    xs = [r["users"] for r in points]
    for q, style in (("p50", "o-"), ("p95", "s-"), ("p99", "^-")):
        ax.plot(xs, [r[q] for r in points], style, label=q)
    ax.axhline(GOAL_P95_MS, color="red", linestyle="--", linewidth=1, label="p95 goal (1 s)")
    ax.set_xlabel("concurrent users (hold of each step)")
    ax.set_ylabel("latency (ms)")
    ax.set_yscale("log")
    ax2 = ax.twinx()
    ax2.plot(xs, [r["error_rate"] * 100 for r in points], "x--", color="black", label="avoidable errors (%)")
    ax2.axhline(GOAL_ERRORS * 100, color="gray", linestyle=":", linewidth=1)
    ax2.set_ylabel("avoidable errors (%)")
    ax2.set_ylim(bottom=0, top=max(10, max((r["error_rate"] * 100 for r in points), default=0) * 1.2))
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper left", fontsize=8)
    ax.set_title(f"{scenario}: latency and errors by users")
    fig.tight_layout()
    fig.savefig(report / "latency-by-users.png", dpi=110)
    plt.close(fig)

    # Requests/s and users over time.
    fig, ax = plt.subplots(figsize=(10, 4.5))
    for r in results:
        rows = r["all_rows"]
        if not rows:
            continue
        first = int(min(x[0] for x in rows))
        last = int(max(x[0] for x in rows))
        per_second = [0] * (last - first + 1)
        errors = [0] * (last - first + 1)
        for x in rows:
            per_second[int(x[0]) - first] += 1
            errors[int(x[0]) - first] += x[5]
        ts = [first + i - t0 for i in range(len(per_second))]
        ax.plot(ts, per_second, linewidth=0.8, color="tab:blue")
        if any(errors):
            ax.plot(ts, errors, linewidth=0.8, color="tab:red")
        ax.axvspan(r["hold_start"] - t0, r["ended"] - t0, color="tab:green", alpha=0.07)
    ax.set_xlabel("seconds since the run started (shaded: holds)")
    ax.set_ylabel("requests/s (red: avoidable errors/s)")
    ax3 = ax.twinx()
    for r in results:
        if r["users_log"]:
            ax3.plot([a - t0 for a, _ in r["users_log"]], [n for _, n in r["users_log"]], color="tab:orange",
                     linewidth=1)
    ax3.set_ylabel("users (orange)")
    ax.set_title(f"{scenario}: requests/s over time")
    fig.tight_layout()
    fig.savefig(report / "requests-per-second.png", dpi=110)
    plt.close(fig)

    # Server CPU and memory over time.
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    ts = [s["t"] - t0 for s in samples]
    top.plot(ts, [s["server_cpu"] for s in samples], label="server", linewidth=0.9)
    top.plot(ts, [s["generator_cpu"] for s in samples], label="load generator", linewidth=0.9)
    if any(s["postgres_cpu"] for s in samples):
        top.plot(ts, [s["postgres_cpu"] for s in samples], label="PostgreSQL", linewidth=0.9)
    top.plot(ts, [s["machine_cpu"] for s in samples], label="whole machine", linewidth=0.6, color="gray")
    top.axhline(100 * (os.cpu_count() or 1), color="red", linestyle="--", linewidth=1)
    top.set_ylabel("CPU (% of one core)")
    top.legend(fontsize=8, loc="upper left")
    bottom.plot(ts, [s["server_rss_mib"] for s in samples], color="tab:purple", label="server RSS (MiB)")
    bottom.set_ylabel("server memory (MiB)")
    ax4 = bottom.twinx()
    ax4.plot(ts, [s["disk_write_mib_s"] for s in samples], color="tab:brown", linewidth=0.6)
    ax4.set_ylabel("server disk writes (MiB/s, brown)")
    bottom.set_xlabel("seconds since the run started")
    top.set_title(f"{scenario}: server CPU and memory")
    fig.tight_layout()
    fig.savefig(report / "server-cpu-memory.png", dpi=110)
    plt.close(fig)


def command_line():
    """The options as given, with paths inside the repository made relative."""
    return " ".join(a.replace(f"{ROOT}/", "") for a in sys.argv[1:])


def write_report(report, scenario, args, results, samples, machine, load_start, load_end, t0, seeded):
    report.mkdir(parents=True, exist_ok=True)
    cores = machine["cores"]
    with open(report / "steps.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["phase", "users", "ramp_s", "hold_s", "requests", "rps", "p50_ms", "p95_ms", "p99_ms",
                    "error_rate", "s5xx", "avoidable_4xx", "resets", "timeouts", "meets_goal", "server_cpu_pct",
                    "generator_cpu_pct", "postgres_cpu_pct", "machine_cpu_pct", "server_rss_max_mib"])
        for r in results:
            w.writerow([r["label"], r["users"], r["ramp_s"], r["hold_s"], r["requests"], f"{r['rps']:.1f}",
                        f"{r['p50']:.1f}", f"{r['p95']:.1f}", f"{r['p99']:.1f}", f"{r['error_rate']:.4f}",
                        r["s5xx"], r["s4xx"], r["resets"], r["timeouts"], int(r["ok"]), f"{r['server_cpu']:.0f}",
                        f"{r['generator_cpu']:.0f}", f"{r['postgres_cpu']:.0f}", f"{r['machine_cpu']:.0f}",
                        f"{r['server_rss_max']:.0f}"])
    with open(report / "timeseries.csv", "w", newline="") as f:
        w = csv.writer(f)
        keys = ["server_cpu", "generator_cpu", "postgres_cpu", "machine_cpu", "server_rss_mib", "disk_write_mib_s"]
        w.writerow(["t_s"] + keys)
        for s in samples:
            w.writerow([f"{s['t'] - t0:.0f}"] + [f"{s[k]:.1f}" for k in keys])
    plot(report, scenario, results, samples, t0)

    steps = [r for r in results if r["label"].startswith("X=")]
    good = [r for r in steps if r["ok"]]
    best = max(good, key=lambda r: r["users"]) if good else None
    failed = next((r for r in steps if not r["ok"]), None)
    loaded = [r for r in results if r["requests"]]
    gen_share = max((r["generator_cpu"] for r in loaded), default=0)
    lines = [
        f"# Capacity: `{scenario}` on the {'embedded default (anb serve --no-worker, SQLite)' if args.platform == 'embedded' else 'anb-api on PostgreSQL with local storage'}",
        "",
        f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(t0))}, command: `capacity/run {command_line()}`.",
        f"Machine: {machine['cpu']}, {cores} cores, {machine['memory_gib']} GiB, Linux {machine['kernel']}; "
        f"load average {load_start} at the start, {load_end} at the end. The server, PostgreSQL and the load "
        f"generator share these cores{' with other work on the machine' if args.shared else ''}.",
        f"Timings: ramp {args.ramp:g} s and hold {args.hold:g} s per step, smoke {args.smoke_users} users x "
        f"{args.smoke_seconds:g} s, final hold {args.final_seconds:g} s"
        + ("" if (args.ramp, args.hold, args.smoke_seconds, args.final_seconds) == (180, 300, 60, 300)
           else " (shorter than the official 3 min + 5 min per step, 1 min smoke, 5 min final)") + ".",
        f"Server binary: `{args.bin.resolve().relative_to(ROOT) if args.bin.resolve().is_relative_to(ROOT) else args.bin.name}`"
        + (" (a debug build: unoptimised code, figures far below a release build's)" if "debug" in args.bin.parts else "")
        + ".",
        f"Seed: {seeded[0]} players with a published video each; the upload clip {seeded[1]}.",
        "Goal per step, over its hold: p95 <= 1 s, avoidable errors (5xx, timeouts, resets, 4xx not asked for) <= 5 %, "
        "no resets or timeouts.",
        "",
        "## Result",
        "",
    ]
    if best:
        lines.append(f"- Largest X meeting the goal: **{best['users']} users**, {best['rps']:.0f} requests/s sustained, "
                     f"p95 {best['p95']:.0f} ms, errors {best['error_rate'] * 100:.2f} %.")
    else:
        lines.append("- No step met the goal.")
    if failed:
        fd = failed["first_degraded"]
        verdict, evidence = bottleneck(failed, cores)
        lines.append(f"- First step missing it: X = {failed['users']} (p95 {failed['p95']:.0f} ms, errors "
                     f"{failed['error_rate'] * 100:.2f} %, {failed['resets']} resets, {failed['timeouts']} timeouts).")
        if fd:
            lines.append(f"- First KPI to degrade: **{fd[0]}**, {fd[1]:.0f} s into that step at {fd[2]} users.")
        lines.append(f"- Bottleneck: {verdict}. Evidence over its hold: {evidence}.")
    elif steps:
        top = steps[-1]
        verdict, evidence = bottleneck(top, cores)
        lines.append(f"- Every step up to X = {top['users']} met the goal (the series stopped at --max-users); "
                     f"at that step: {evidence}.")
    lines.append(f"- Load generator (Locust, one process): at most {gen_share:.0f} % of one core "
                 f"({gen_share / cores:.0f} % of the machine's {cores} cores) in any phase's hold.")
    lines += [
        "",
        "## Phases",
        "",
        "| phase | users | reached | req/s | p50 ms | p95 ms | p99 ms | errors % | 5xx | avoidable 4xx | resets | timeouts | server CPU % | generator CPU % | PostgreSQL CPU % | machine CPU % | server RSS MiB | goal |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['label']} | {r['users']} | {r['reached']} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | {r['p99']:.0f} | "
            f"{r['error_rate'] * 100:.2f} | {r['s5xx']} | {r['s4xx']} | {r['resets']} | {r['timeouts']} | "
            f"{r['server_cpu']:.0f} | {r['generator_cpu']:.0f} | {r['postgres_cpu']:.0f} | {r['machine_cpu']:.0f} | "
            f"{r['server_rss_max']:.0f} | {'yes' if r['ok'] else 'no'} |"
        )
    focus = failed or (steps[-1] if steps else results[-1])
    lines += ["", f"## Requests in the hold of {focus['label']}", "",
              "| request | count | req/s | p50 ms | p95 ms | p99 ms | avoidable errors |", "|---|---|---|---|---|---|---|"]
    for name, k in focus["by_name"].items():
        lines.append(f"| `{name}` | {k['requests']} | {k['rps']:.1f} | {k['p50']:.0f} | {k['p95']:.0f} | "
                     f"{k['p99']:.0f} | {k['errors']} |")
    lines += [
        "",
        "## Plots",
        "",
        "- [latency-by-users.png](latency-by-users.png): p50/p95/p99 and the avoidable-error rate at each step's hold.",
        "- [requests-per-second.png](requests-per-second.png): requests/s (and errors/s) over time, users on the right axis.",
        "- [server-cpu-memory.png](server-cpu-memory.png): CPU of the server, the generator, PostgreSQL and the whole "
        "machine; the server's memory and disk writes.",
        "",
        "Data: [steps.csv](steps.csv) (one line per phase), [timeseries.csv](timeseries.csv) (one line per second).",
        "",
    ]
    (report / "summary.md").write_text("\n".join(lines))
    return best, failed


# --- the series ----------------------------------------------------------------------------------------------


def run_scenario(scenario, args, platform_, sampler, work, players, public, clip, machine, seeded):
    t0 = time.time()
    load_start = load_average()
    results = []
    smoke = run_phase(scenario, Phase("smoke", args.smoke_users, 1, args.smoke_seconds), platform_, sampler, work,
                      players, public, clip, f"{scenario}-smoke")
    results.append(smoke)
    last_good = None
    for users in args.users:
        r = run_phase(scenario, Phase(f"X={users}", users, args.ramp, args.hold), platform_, sampler, work, players,
                      public, clip, f"{scenario}-x{users}")
        results.append(r)
        if not r["ok"]:
            break
        last_good = users
    if last_good and args.final_seconds > 0:
        users = max(1, int(round(last_good * 0.8)))
        results.append(run_phase(scenario, Phase(f"80% of {last_good}", users, args.ramp * 0.8, args.final_seconds),
                                 platform_, sampler, work, players, public, clip, f"{scenario}-final"))
    samples = [s for s in sampler.rows if s["t"] >= t0]
    report = args.out / f"{scenario}-{args.platform}-{time.strftime('%Y%m%d-%H%M', time.gmtime(t0))}"
    if args.quick:
        report = args.out / scenario
        shutil.rmtree(report, ignore_errors=True)
    write_report(report, scenario, args, results, samples, machine, load_start, load_average(), t0, seeded)
    say(f"{scenario}: report in {report}")
    return results


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scenario", choices=SCENARIOS + ("all",))
    p.add_argument("--quick", action="store_true",
                   help="seconds instead of minutes, X = 10: a check that the harness works; fails on any avoidable error")
    p.add_argument("--platform", choices=("embedded", "postgres"), default="embedded")
    p.add_argument("--bin", type=Path, required=True, help="the anb (embedded) or anb-api (postgres) binary")
    p.add_argument("--users", help="comma-separated X values (default 100, 200, 300, ... up to --max-users)")
    p.add_argument("--step", type=int, default=100)
    p.add_argument("--max-users", type=int, default=2000)
    p.add_argument("--ramp", type=float, default=180)
    p.add_argument("--hold", type=float, default=300)
    p.add_argument("--smoke-users", type=int, default=5)
    p.add_argument("--smoke-seconds", type=float, default=60)
    p.add_argument("--final-seconds", type=float, default=300)
    p.add_argument("--players", type=int, help="seeded players (default: enough for the largest X)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    p.add_argument("--clip-seconds", type=int, default=21)
    p.add_argument("--pg-url", default=os.environ.get("ANB_TEST_POSTGRES_URL",
                                                       "postgres://postgres:postgres@127.0.0.1:5432/postgres"))
    p.add_argument("--generator-processes", type=int, default=1,
                   help="Locust processes (one process uses at most one core)")
    p.add_argument("--shared", action="store_true", help="say in the report that the machine ran other work too")
    args = p.parse_args()
    if args.quick:
        args.ramp, args.hold, args.smoke_seconds, args.final_seconds = 1, 3, 2, 2
        args.users = args.users or "10"
        if args.out == HERE / "results":
            args.out = ROOT / "target" / "capacity-quick"
    args.users = ([int(x) for x in args.users.split(",")] if args.users
                  else list(range(args.step, args.max_users + 1, args.step)))
    args.players = args.players or max(200, max(args.users) + 100)
    return args


def main():
    global GENERATOR_PROCESSES
    args = parse_args()
    GENERATOR_PROCESSES = args.generator_processes
    if not args.bin.exists():
        die(f"no binary at {args.bin}")
    machine = machine_description()
    scratch = Path(tempfile.mkdtemp(prefix="anb-capacity."))
    work = scratch / "work"
    work.mkdir()
    platform_ = Platform(args.platform, args.bin.resolve(), scratch, args.pg_url)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    failures = []
    try:
        say(f"starting {args.platform} platform on {platform_.base} (load average {load_average()})")
        platform_.start()
        clip_dir = ROOT / "target" / "capacity"
        clip_dir.mkdir(parents=True, exist_ok=True)
        clip = clip_dir / f"clip-1080p-{args.clip_seconds}s.mp4"
        make_clip(clip, args.clip_seconds)
        say(f"seeding {args.players} players")
        public = args.players
        platform_.seed(args.players)
        seeded = (args.players, f"{clip.stat().st_size / 1e6:.2f} MB, 1920x1080, {args.clip_seconds} s")
        sampler = Sampler(platform_.process.pid, args.platform == "postgres")
        sampler.start()
        scenarios = SCENARIOS if args.scenario == "all" else (args.scenario,)
        for scenario in scenarios:
            results = run_scenario(scenario, args, platform_, sampler, work, args.players, public, clip, machine,
                                   seeded)
            if args.quick:
                for r in results:
                    if r["requests"] == 0 or r["errors"] or r["resets"] or r["timeouts"]:
                        failures.append(f"{scenario} {r['label']}: {r['requests']} requests, {r['errors']} avoidable errors")
                        bad = [x for x in r["all_rows"] if x[5]][:5]
                        if bad:
                            failures.append(f"  first ones: {bad}")
        sampler.stop.set()
    except KeyboardInterrupt:
        failures.append("interrupted")
    finally:
        platform_.stop()
        # The run's uploads, database and logs go with the scratch directory.
        if failures:
            log = scratch / "server.log"
            if log.exists():
                sys.stderr.write(log.read_text()[-3000:])
        shutil.rmtree(scratch, ignore_errors=True)
    if failures:
        die("the capacity run failed:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
