"""Faults under load (capacity/faults/README.md).

Starts anb-api (the debug or release binary given) on a private PostgreSQL, a private
Redis and the shared S3/SQS stand-in, each dependency through a TCP gate
(capacity/gate.py), puts clients on it, closes one gate for a while and opens it again:

- db: the journey (sign-up and log-in once, then gallery, votes, rankings, an upload now
  and then, my videos) while the database is away;
- redis: uploads while the Redis queue is away (the jobs wait in the outbox);
- sqs: uploads while the SQS endpoint is away (S3 stays reachable).

Reports, per fault: the requests made while it lasted, those that failed and how, the
longest answer, the time to recover after the gate opened, and the data lost (accepted
votes or uploads missing from the database, accepted uploads whose job never reached the
queue). Exits 1 on lost data, a 5xx other than 503, a 503 without Retry-After, a request
that hung, or no recovery within the bound. Everything listens on 127.0.0.1; the private
servers and the temp dir are removed on exit, also on Ctrl-C.
"""

import argparse
import collections
import datetime
import faulthandler
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from common import die, http, say  # noqa: E402
from gate import Gate  # noqa: E402
from load import PASSWORD, VIDEO_ID, Client, Record  # noqa: E402
from services import Api, PrivatePostgres, PrivateRedis, SqsQueue, make_tiny_clip, remove  # noqa: E402

SCENARIOS = ("db", "redis", "sqs")
TEMPLATE_EMAIL = "plantilla@carga.test"
# An answer slower than this hung: the API's own bounds (a 3 s pool acquire, a 5 s
# statement timeout) keep every answer well under it.
HANG_SECONDS = 10.0


@dataclass
class Settings:
    clients: int
    upload_clients: int
    warm_up: float
    fault: float
    recovery_bound: float
    timeout: float
    think: tuple
    upload_think: tuple
    # How long the clients go on after the reopening (their commits wake the relay).
    tail: float
    players: int
    hang: float = HANG_SECONDS
    # refuse: connections refused and reset; partition: held open, nothing gets through.
    cut: str = "refuse"


FULL = Settings(clients=40, upload_clients=12, warm_up=10, fault=10, recovery_bound=60, timeout=30,
                think=(0.3, 1.0), upload_think=(1.0, 2.0), tail=5, players=300)
QUICK = Settings(clients=12, upload_clients=6, warm_up=2, fault=3, recovery_bound=30, timeout=15,
                 think=(0.1, 0.4), upload_think=(0.5, 1.0), tail=3, players=100)


@dataclass
class Outcome:
    fault: str
    cut: str
    during: list
    after: list
    longest: float
    first_ok: float = None
    all_ok: float = None
    delivered: float = None
    published: float = None
    ready_back: float = None
    lost: int = 0
    lost_detail: str = ""
    duplicates: int = 0
    accepted: str = ""
    notes: list = field(default_factory=list)
    problems: list = field(default_factory=list)


def run_scenario(name, settings, binary, scratch, pg, redis, sqs, clip):
    database = f"faults_{name}"
    pg.create_database(database)
    env = {"ANB_DATABASE_URL": pg.url(database), "ANB_STORAGE_URL": str(scratch / f"{name}-media")}
    if name == "db":
        gate = Gate("127.0.0.1", pg.port, "database gate")
        env["ANB_DATABASE_URL"] = env["ANB_QUEUE_URL"] = pg.url(database, gate.port)
    elif name == "redis":
        gate = Gate("127.0.0.1", redis.port, "redis gate")
        env["ANB_QUEUE_URL"] = f"redis://127.0.0.1:{gate.port}"
    else:
        host, port = re.match(r"https?://([^:/]+):(\d+)", sqs.endpoint).groups()
        gate = Gate(host, int(port), "sqs gate")
        env.update({
            "ANB_QUEUE_URL": sqs.url_through(gate.port),
            "ANB_STORAGE_URL": f"s3://{sqs.bucket}",
            "ANB_S3_PATH_STYLE": "true",
            # S3 straight to the stand-in; the queue URL names its own endpoint (the gate).
            "AWS_ENDPOINT_URL": sqs.endpoint,
        })
    api = Api(binary, scratch, name, env)
    record, stop = Record(), threading.Event()
    clients = []
    try:
        api.start()
        if name == "db":
            seed(api, pg, database, settings.players)
        kind = "journey" if name == "db" else "upload"
        count = settings.clients if name == "db" else settings.upload_clients
        think = settings.think if name == "db" else settings.upload_think
        clients = [Client(n, kind, api.port, record, stop, clip, name, settings.timeout, think)
                   for n in range(1, count + 1)]
        for client in clients:
            client.start()
        for client in clients:
            client.ready.wait(120)
        broken = [c.failed_start for c in clients if c.failed_start]
        if broken:
            die(f"{name}: {len(broken)} clients could not sign up or log in: {broken[0]}")
        ready = ReadyWatch(api.base)
        ready.start()
        time.sleep(settings.warm_up)
        say(f"{name}: closing the gate for {settings.fault:g} s under {count} clients")
        closed_at = time.time()
        if settings.cut == "partition":
            gate.partition()
        else:
            gate.close()
        time.sleep(settings.fault)
        outbox_at_reopen = outbox_state(pg, database) if name != "db" else None
        gate.open()
        opened_at = time.time()
        say(f"{name}: gate open again")
        outcome = Outcome(fault=name, cut=settings.cut, during=[], after=[], longest=0.0)
        if name == "db":
            wait_for_clients(record, clients, opened_at, settings.recovery_bound)
            time.sleep(1)
        else:
            drained = OutboxWatch(pg, database, opened_at, settings.recovery_bound)
            drained.start()
            outcome.delivered, seen = wait_for_delivery(name, record, redis, sqs, opened_at, settings, stop)
            drained.join(settings.recovery_bound)
            outcome.published = drained.after
        stop.set()
        for client in clients:
            client.join(settings.timeout + 5)
        ready.stop.set()
        ready.join(5)
        outcome.ready_back = ready.back_after(closed_at, opened_at)
        outcome.problems += [f"a client stopped: {c.crashed}" for c in clients if c.crashed]
        summarise(outcome, record, closed_at, opened_at, settings)
        if name == "db":
            check_database(outcome, record, pg, database)
        else:
            check_delivery(outcome, record, seen, pg, database, outbox_at_reopen, closed_at)
        relay_notes(outcome, api.log_path, closed_at, opened_at)
        return outcome
    finally:
        stop.set()
        api.stop()
        gate.stop()


def seed(api, pg, database, players):
    """Players with published videos to vote for (seed.sql), all with the hash of one sign-up."""
    status, body = http("POST", f"{api.base}/api/auth/signup", {
        "first_name": "Plantilla", "last_name": "Carga", "email": TEMPLATE_EMAIL, "password1": PASSWORD,
        "password2": PASSWORD, "city": "Bogotá", "country": "Colombia",
    })
    if status != 201:
        die(f"the template sign-up answered {status}: {body}")
    subprocess.run(
        ["psql", pg.url(database), "-qX", "-v", "ON_ERROR_STOP=1", "-v", f"players={players}",
         "-v", f"votes={players * 3}", "-v", f"template_email={TEMPLATE_EMAIL}",
         "-f", str(ROOT / "anb-api/benches/load/seed.sql")],
        check=True, stdout=subprocess.DEVNULL, timeout=300,
    )


class ReadyWatch(threading.Thread):
    """GET /ready four times a second: when the API said it was ready again."""

    def __init__(self, base):
        super().__init__(daemon=True)
        self.base = base
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                status = http("GET", f"{self.base}/ready", timeout=5)[0]
            except OSError:
                status = None
            self.samples.append((time.time(), status))
            self.stop.wait(0.25)

    def back_after(self, closed_at, opened_at):
        """Seconds from the reopening to the first 200 of /ready after a non-200 since the close."""
        went_down = any(t >= closed_at and s != 200 for t, s in self.samples)
        if not went_down:
            return None
        for t, status in self.samples:
            if t >= opened_at and status == 200:
                return t - opened_at
        return float("inf")


def wait_for_clients(record, clients, opened_at, bound):
    deadline = opened_at + bound
    while time.time() < deadline:
        with record.lock:
            fine = {r.client for r in record.requests if r.started >= opened_at and r.ok}
        if len(fine) == len(clients):
            return
        time.sleep(0.2)


def job_ids(payloads):
    ids = collections.Counter()
    for payload in payloads:
        match = VIDEO_ID.search(payload)
        if match:
            ids[match.group(1)] += 1
    return ids


class OutboxWatch(threading.Thread):
    """Ten times a second from the reopening: when the relay had published every job
    committed before it (none of them left in the outbox)."""

    def __init__(self, pg, database, opened_at, bound):
        super().__init__(daemon=True)
        self.pg, self.database, self.opened_at, self.bound = pg, database, opened_at, bound
        self.after = None

    def run(self):
        opened_ms = int(self.opened_at * 1000)
        while time.time() < self.opened_at + self.bound:
            left = self.pg.psql(self.database, "SELECT count(*) FROM anb_queue_outbox "
                                f"WHERE dead_at_ms IS NULL AND created_at_ms < {opened_ms}")[0][0]
            if left == "0":
                self.after = time.time() - self.opened_at
                return
            time.sleep(0.1)


def wait_for_delivery(name, record, redis, sqs, opened_at, settings, stop):
    """Polls the broker from the reopening: (seconds until every upload accepted before the
    reopening was delivered, Counter of the video ids of the jobs delivered). The clients keep
    uploading for a few seconds after the reopening, then stop; every accepted upload must
    be delivered within the bound."""
    seen = collections.Counter()
    deadline = opened_at + settings.recovery_bound
    delivered = None
    # The clients go on uploading for a while after the reopening, then stop.
    tail = threading.Timer(settings.tail, stop.set)
    tail.start()
    while time.time() < deadline:
        if name == "redis":
            seen = job_ids(redis.payloads())
        else:
            seen.update(job_ids(sqs.receive()))
        now = time.time()
        if delivered is None and all(v in seen for v in accepted(record, before=opened_at)):
            delivered = now - opened_at
        if stop.is_set() and delivered is not None and all(v in seen for v in accepted(record)):
            break
        time.sleep(0.25)
    tail.cancel()
    return delivered, seen


def accepted(record, before=float("inf")):
    """Video ids of the uploads answered 201 before `before`."""
    with record.lock:
        return [video for video, at in record.uploads if at < before]


def outbox_state(pg, database):
    """(jobs waiting, the most publish attempts, the longest wait before one may be tried
    again in ms) at the moment the gate opens."""
    now_ms = int(time.time() * 1000)
    rows = pg.psql(database, "SELECT count(*), coalesce(max(publish_attempts), 0), "
                   f"coalesce(max(claimed_until_ms) - {now_ms}, 0) FROM anb_queue_outbox WHERE dead_at_ms IS NULL")
    return tuple(int(x) for x in rows[0])


def summarise(outcome, record, closed_at, opened_at, settings):
    with record.lock:
        requests = list(record.requests)
    outcome.during = [r for r in requests if closed_at <= r.started < opened_at]
    outcome.after = [r for r in requests if r.started >= opened_at]
    around = [r for r in requests if r.ended >= closed_at]
    outcome.longest = max((r.seconds for r in around), default=0.0)
    firsts = {}
    for r in sorted(outcome.after, key=lambda r: r.ended):
        if r.ok:
            firsts.setdefault(r.client, r.ended - opened_at)
    if firsts:
        outcome.first_ok = min(firsts.values())
    clients = {r.client for r in requests}
    if len(firsts) == len(clients):
        outcome.all_ok = max(firsts.values())
    bad = [r for r in around if not r.ok]
    for r in bad:
        if r.status in ("timeout", "reset"):
            outcome.problems.append(f"{r.name}: {r.status} after {r.seconds:.1f} s")
        elif r.status >= 500 and r.status != 503:
            outcome.problems.append(f"{r.name}: {r.status}")
        elif r.status == 503 and not r.retry_after:
            outcome.problems.append(f"{r.name}: 503 without Retry-After")
    slowest = sorted(around, key=lambda r: r.seconds, reverse=True)[:3]
    outcome.notes.append("slowest answers from the closing on: " + ", ".join(
        f"{r.name} {r.status} in {r.seconds:.1f} s (sent {r.started - closed_at:+.1f} s from the closing)"
        for r in slowest))
    if outcome.longest > settings.hang:
        outcome.problems.append(f"the longest answer took {outcome.longest:.1f} s (over {settings.hang:g} s: hung)")
    if outcome.fault == "db" and outcome.all_ok is None:
        outcome.problems.append(f"not every client succeeded within {settings.recovery_bound:g} s of the reopening")


def check_database(outcome, record, pg, database):
    votes = {(email, video) for email, video in pg.psql(
        database, "SELECT u.email, v.video_id::text FROM votes v JOIN users u ON u.id = v.user_id "
                  "WHERE u.email LIKE 'falla-%'")}
    videos = {row[0] for row in pg.psql(database, "SELECT id::text FROM videos")}
    missing_votes = [v for v in record.votes if v not in votes]
    missing_uploads = [v for v in accepted(record) if v not in videos]
    outcome.lost = len(missing_votes) + len(missing_uploads)
    outcome.accepted = f"{len(record.votes)} votes, {len(record.uploads)} uploads"
    outcome.lost_detail = f"{len(missing_votes)} votes, {len(missing_uploads)} uploads"
    if outcome.lost:
        outcome.problems.append(f"lost: {outcome.lost_detail}")


def check_delivery(outcome, record, seen, pg, database, at_reopen, closed_at):
    missing = [v for v in accepted(record) if v not in seen]
    outcome.lost = len(missing)
    outcome.duplicates = sum(n - 1 for n in seen.values() if n > 1)
    with record.lock:
        answered = dict(record.uploads)
    for video, n in seen.items():
        if n > 1:
            outcome.notes.append(f"job of video {video} delivered {n} times; its upload was answered "
                                 f"{answered.get(video, float('nan')) - closed_at:+.2f} s from the closing")
    pending = pg.psql(database, "SELECT count(*) FROM anb_queue_outbox WHERE dead_at_ms IS NULL")[0][0]
    dead = pg.psql(database, "SELECT count(*) FROM anb_queue_outbox WHERE dead_at_ms IS NOT NULL")[0][0]
    outcome.accepted = f"{len(record.uploads)} uploads"
    outcome.lost_detail = f"{len(missing)} jobs missing, {outcome.duplicates} duplicates, outbox {pending} left {dead} dead"
    waiting, attempts, wait_ms = at_reopen
    outcome.notes.append(f"at the reopening the outbox held {waiting} jobs, the most tried {attempts} times, "
                         f"the latest claimed or held back for another {max(0, wait_ms) / 1000:.1f} s")
    if outcome.published is None:
        outcome.problems.append("the outbox still held jobs from before the reopening at the end of the bound")
    if outcome.delivered is None:
        outcome.problems.append("the jobs accepted during the fault were not all delivered within the bound")
    if outcome.lost:
        outcome.problems.append(f"lost: {outcome.lost_detail}")
        now_ms = int(time.time() * 1000)
        for row in pg.psql(database, f"SELECT id, publish_attempts, claimed_until_ms - {now_ms}, "
                           "coalesce(last_error, '') FROM anb_queue_outbox ORDER BY id LIMIT 5"):
            outcome.notes.append(f"left in the outbox: id {row[0]}, {row[1]} attempts, claimable in "
                                 f"{int(row[2] or 0) / 1000:.1f} s, last error {row[3][:200]!r}")


ANSI = re.compile(r"\x1b\[[0-9;]*m")
RETRY = re.compile(r"^(\S+Z) .*?publishing the outbox failed; retrying error=(?:queue )?([^:(]{0,40})")
RETRY_IN = re.compile(r"retry_in_ms=(\d+)")


def relay_notes(outcome, log_path, closed_at, opened_at):
    """The relay's failed rounds while the broker was away, from the API's log, in seconds
    from the closing (and where the last one put its next try, from the reopening)."""
    rounds = []
    for line in log_path.read_text(errors="replace").splitlines():
        if "publishing the outbox failed" not in line:
            continue
        line = ANSI.sub("", line)
        if (match := RETRY.match(line)) and (wait := RETRY_IN.search(line)):
            at = datetime.datetime.fromisoformat(match.group(1).replace("Z", "+00:00")).timestamp()
            rounds.append((at, match.group(2).strip(), int(wait.group(1))))
    if rounds:
        listed = ", ".join(f"{at - closed_at:+.1f} s {what} (next in {wait} ms)" for at, what, wait in rounds)
        last_at, _, last_wait = rounds[-1]
        outcome.notes.append(f"relay: {len(rounds)} failed rounds after the closing: {listed}; the last one's next "
                             f"try at {last_at + last_wait / 1000 - opened_at:+.1f} s from the reopening")


def seconds(value):
    if value is None:
        return "—"
    if value == float("inf"):
        return "never"
    return f"{value:.1f} s"


def table(outcomes):
    lines = [
        "| fault | requests during fault | failed | statuses of the failed | longest answer | recovery after reopening | data lost |",
        "|---|---|---|---|---|---|---|",
    ]
    for o in outcomes:
        failed = [r for r in o.during if not r.ok]
        statuses = collections.Counter(
            f"{r.status}{' + Retry-After' if r.retry_after else ''}" if isinstance(r.status, int) else r.status
            for r in failed
        )
        status_text = ", ".join(f"{s} ×{n}" for s, n in statuses.most_common()) or "none"
        if o.fault == "db":
            recovery = f"first 2xx {seconds(o.first_ok)}, all clients {seconds(o.all_ok)}"
        else:
            recovery = f"outbox published {seconds(o.published)}, jobs received {seconds(o.delivered)}"
        if o.ready_back is not None:
            recovery += f"; /ready {seconds(o.ready_back)}"
        lost = f"{o.lost} (of {o.accepted}" + (f"; {o.duplicates} duplicate jobs)" if o.fault != "db" else ")")
        label = {"db": "database away (journey)", "redis": "Redis queue away (uploads)",
                 "sqs": "SQS endpoint away (uploads)"}[o.fault]
        if o.cut == "partition":
            label = label.replace(" away", " partitioned")
        lines.append(f"| {label} | {len(o.during)} | {len(failed)} | {status_text} | "
                     f"{o.longest * 1000:.0f} ms | {recovery} | {lost} |")
    return "\n".join(lines)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bin-dir", type=Path, required=True, help="directory holding anb-api")
    parser.add_argument("--quick", action="store_true", help="each fault a few seconds, a dozen clients")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="comma-separated: db,redis,sqs")
    parser.add_argument("--clients", type=int, help="journey clients of the db fault")
    parser.add_argument("--upload-clients", type=int, help="uploading clients of the redis and sqs faults")
    parser.add_argument("--fault-seconds", type=float, help="how long each gate stays closed")
    parser.add_argument("--tail-seconds", type=float,
                        help="how long the uploading clients go on after the reopening (0: they stop at once)")
    parser.add_argument("--cut", choices=("refuse", "partition"), default="refuse",
                        help="refuse: the gate refuses and resets connections (the server is down); partition: "
                             "it holds them open and lets nothing through (the network is)")
    parser.add_argument("--hang-seconds", type=float, default=HANG_SECONDS,
                        help=f"an answer slower than this hung (default {HANG_SECONDS:g})")
    parser.add_argument("--logs", type=Path, help="copy the API logs here before the temp dir goes")
    parser.add_argument("--aws-endpoint", default=os.environ.get("ANB_TEST_AWS_ENDPOINT", "http://127.0.0.1:4566"),
                        help="the shared S3/SQS stand-in (never stopped)")
    args = parser.parse_args()
    settings = QUICK if args.quick else FULL
    if args.clients:
        settings.clients = args.clients
    if args.upload_clients:
        settings.upload_clients = args.upload_clients
    if args.fault_seconds:
        settings.fault = args.fault_seconds
    settings.hang = args.hang_seconds
    settings.cut = args.cut
    if args.tail_seconds is not None:
        settings.tail = args.tail_seconds
    args.scenarios = [s for s in args.only.split(",") if s]
    if unknown := set(args.scenarios) - set(SCENARIOS):
        die(f"unknown faults: {sorted(unknown)}")
    return args, settings


def main():
    # `kill -USR1 <pid>` prints where every thread of a run that seems stuck waits.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    args, settings = parse_args()
    binary = (args.bin_dir / "anb-api").resolve()
    if not binary.exists():
        die(f"no anb-api in {args.bin_dir}")
    for key, value in (("AWS_ACCESS_KEY_ID", "test"), ("AWS_SECRET_ACCESS_KEY", "test"), ("AWS_REGION", "us-east-1")):
        os.environ.setdefault(key, value)

    def on_signal(_signum, _frame):
        raise KeyboardInterrupt

    # SIGINT too: a shell starting the run in the background may have left it ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, on_signal)
    scratch = Path(tempfile.mkdtemp(prefix="anb-faults."))
    os.chmod(scratch, 0o755)  # the private PostgreSQL runs as `postgres` when we are root
    pg, redis, sqs = PrivatePostgres(scratch), PrivateRedis(scratch), None
    outcomes, failed = [], False
    started = time.time()
    try:
        clip = scratch / "clip.mp4"
        make_tiny_clip(clip)
        clip = clip.read_bytes()
        say("starting a private PostgreSQL and a private Redis")
        pg.start()
        redis.start()
        if "sqs" in args.scenarios:
            sqs = SqsQueue(args.aws_endpoint)
            sqs.create()
        for name in args.scenarios:
            outcomes.append(run_scenario(name, settings, binary, scratch, pg, redis, sqs, clip))
    except KeyboardInterrupt:
        failed = True
        say("interrupted")
    except Exception:
        failed = True
        for log in scratch.glob("*-api.log"):
            sys.stderr.write(f"--- {log.name}\n{log.read_text(errors='replace')[-3000:]}\n")
        raise
    finally:
        if sqs:
            sqs.remove()
        redis.stop()
        pg.stop()
        if args.logs:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in scratch.glob("*-api.log"):
                shutil.copy(log, args.logs / log.name)
        remove(scratch)
    if outcomes:
        print(table(outcomes))
        for o in outcomes:
            for note in o.notes:
                print(f"- {o.fault}: {note}")
            for problem in o.problems:
                print(f"- {o.fault}: PROBLEM: {problem}")
                failed = True
        print(f"({time.time() - started:.0f} s in all, {'quick' if args.quick else 'full'} settings: "
              f"{settings.clients} journey clients, {settings.upload_clients} uploading clients, "
              f"faults of {settings.fault:g} s, gates that {settings.cut})")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
