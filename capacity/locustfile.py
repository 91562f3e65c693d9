"""The capacity scenarios as Locust user journeys (driven by capacity/run.py).

Every request's outcome goes to the CSV file named by ANB_CAP_REQUESTS, one
line per request (completion time, name, milliseconds, status, error kind,
avoidable or not), so the driver computes exact percentiles and error rates
per phase instead of Locust's running aggregates. ANB_CAP_USERS_LOG gets the
number of running users every second.

Environment (set by run.py):
  ANB_CAP_SCENARIO    upload | journey | read
  ANB_CAP_REQUESTS    where to write the per-request CSV
  ANB_CAP_USERS_LOG   where to write "time,users" each second
  ANB_CAP_TAG         unique per phase: e-mails and client addresses derive from it
  ANB_CAP_PASSWORD    the password of the seeded players
  ANB_CAP_PLAYERS     how many seeded players there are (jugador1..N@carga.test)
  ANB_CAP_PUBLIC      how many published videos there are
  ANB_CAP_CLIP        the upload clip (upload scenario)
  ANB_CAP_FIRST_PLAYER  the first seeded player this phase's uploaders log in as
"""

import csv
import os
import random
import time
import uuid

import gevent
from locust import FastHttpUser, between, events, task
from locust.exception import StopUser
from locust.runners import WorkerRunner

SCENARIO = os.environ.get("ANB_CAP_SCENARIO", "read")
TAG = os.environ.get("ANB_CAP_TAG", "t")
PASSWORD = os.environ.get("ANB_CAP_PASSWORD", "carga-de-prueba-2026")
PLAYERS = int(os.environ.get("ANB_CAP_PLAYERS", "0"))
PUBLIC = int(os.environ.get("ANB_CAP_PUBLIC", "0"))
FIRST_PLAYER = int(os.environ.get("ANB_CAP_FIRST_PLAYER", "1"))
PAGE = 20
CITIES = ["Bogotá", "Medellín", "Cali", "Barranquilla", "Cartagena", "Cúcuta", "Bucaramanga", "Santa Marta"]

# --- the per-request log -------------------------------------------------------------

_REQUESTS = os.environ.get("ANB_CAP_REQUESTS")
_log = None
_log_pid = None


def _writer():
    """This process's CSV writer: with --processes each worker writes its own
    file (the path plus its pid), opened after the fork."""
    global _log, _log_pid, _log_file
    if _log_pid != os.getpid():
        _log_pid = os.getpid()
        _log_file = open(f"{_REQUESTS}.{_log_pid}" if _REQUESTS else os.devnull, "w", newline="", buffering=1 << 20)
        _log = csv.writer(_log_file)
        _log.writerow(["t", "name", "ms", "status", "error", "avoidable"])
    return _log


_log_file = None


def _error_kind(exception):
    """timeout, reset, or other (a connection refused, a broken body...)."""
    if exception is None:
        return ""
    text = f"{type(exception).__name__} {exception}".lower()
    if "timeout" in text or "timed out" in text:
        return "timeout"
    if "reset" in text or "broken pipe" in text or "eof" in text or "closed" in text:
        return "reset"
    return "other"


@events.request.add_listener
def _record(name, response_time, response, exception, context, **_):
    status = getattr(response, "status_code", 0) or 0
    expected = (context or {}).get("expected", 200)
    kind = _error_kind(exception) if status == 0 else ""
    # Any 5xx, timeout or reset, and any 4xx the scenario did not ask for.
    avoidable = 1 if (kind or status != expected) else 0
    _writer().writerow([f"{time.time():.3f}", name, f"{response_time:.1f}", status, kind, avoidable])


@events.test_start.add_listener
def _watch_users(environment, **_):
    path = os.environ.get("ANB_CAP_USERS_LOG")
    # The users of the whole run: the local runner, or the master of --processes.
    if not path or isinstance(environment.runner, WorkerRunner):
        return

    def loop():
        with open(path, "w", buffering=1) as out:
            while True:
                runner = environment.runner
                out.write(f"{time.time():.3f},{runner.user_count if runner else 0}\n")
                gevent.sleep(1)

    gevent.spawn(loop)


@events.quitting.add_listener
def _flush(**_):
    if _log_file is not None and _log_pid == os.getpid():
        _log_file.flush()


# --- shared helpers ---------------------------------------------------------------------

_counter = iter(range(1, 10**9))


class Player(FastHttpUser):
    abstract = True
    wait_time = between(1, 3)
    # A request slower than this is a timeout (an avoidable error).
    network_timeout = 30.0
    connection_timeout = 10.0

    def on_start(self):
        self.n = next(_counter)
        # Each virtual user is its own client address (the API trusts
        # X-Forwarded-For from 127.0.0.1 for the run): the per-IP limits then
        # apply per person, as behind the load balancer, not to the whole run.
        self.headers = {"X-Forwarded-For": f"10.{(self.n >> 16) & 255}.{(self.n >> 8) & 255}.{self.n & 255}"}
        self.token = None

    def call(self, method, path, name, expected=200, json=None, data=None, headers=None, auth=True):
        all_headers = dict(self.headers)
        if auth and self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        if headers:
            all_headers.update(headers)
        with self.client.request(
            method,
            path,
            name=name,
            json=json,
            data=data,
            headers=all_headers,
            context={"expected": expected},
            catch_response=True,
        ) as response:
            if response.status_code != expected:
                response.failure(f"{response.status_code}: {response.text[:200] if response.text else ''}")
                return None
            response.success()
            return response

    def until_ok(self, attempt):
        """Repeats `attempt` after a pause until it succeeds, as a person
        would after a 503 with Retry-After: the user stays in the run (each
        failure is counted) instead of leaving it."""
        for _ in range(20):
            if (response := attempt()) is not None:
                return response
            gevent.sleep(random.uniform(1, 3))
        raise StopUser()

    def login(self, email):
        response = self.until_ok(
            lambda: self.call(
                "POST", "/api/auth/login", "POST /api/auth/login", json={"email": email, "password": PASSWORD}
            )
        )
        self.token = response.json()["access_token"]

    def rankings(self):
        self.call("GET", "/api/public/rankings", "GET /api/public/rankings", auth=False)
        city = random.choice(CITIES)
        self.call("GET", f"/api/public/rankings?city={city}", "GET /api/public/rankings?city=", auth=False)

    def gallery_page(self):
        pages = max(1, PUBLIC // PAGE)
        page = random.randint(1, pages)
        response = self.call("GET", f"/api/public/videos?page={page}&limit={PAGE}", "GET /api/public/videos")
        return response.json() if response is not None else []


# --- the scenarios ----------------------------------------------------------------------------


def _multipart(clip_path):
    """The upload body, built once: every upload sends the same bytes."""
    boundary = uuid.uuid4().hex
    with open(clip_path, "rb") as f:
        clip = f.read()
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nJugada de carga\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"video_file\"; filename=\"clip.mp4\"\r\n"
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    return f"multipart/form-data; boundary={boundary}", head + clip + f"\r\n--{boundary}--\r\n".encode()


if SCENARIO == "upload":
    _CONTENT_TYPE, _BODY = _multipart(os.environ["ANB_CAP_CLIP"])


class Uploader(Player):
    """Logs in once as a seeded player, then uploads a clip and lists their videos.

    The clip is removed right after it is listed: with no worker it stays
    `uploaded`, which its owner may delete, and the disk does not fill.
    """

    def on_start(self):
        super().on_start()
        self.login(f"jugador{FIRST_PLAYER + self.n - 1}@carga.test")

    @task
    def upload_and_list(self):
        response = self.call(
            "POST",
            "/api/videos/upload",
            "POST /api/videos/upload",
            expected=201,
            data=_BODY,
            headers={"Content-Type": _CONTENT_TYPE},
        )
        self.call("GET", "/api/videos", "GET /api/videos")
        if response is not None:
            video_id = response.json()["video_id"]
            self.call("DELETE", f"/api/videos/{video_id}", "DELETE /api/videos/{id} (clean-up)")


class Fan(Player):
    """Signs up and logs in once, then browses, votes, reads rankings and their videos."""

    def on_start(self):
        super().on_start()
        self.voted = set()
        email = f"fan-{TAG}-{self.n}@carga.test"
        body = {
            "first_name": "Aficionada",
            "last_name": "Carga",
            "email": email,
            "password1": PASSWORD,
            "password2": PASSWORD,
            "city": random.choice(CITIES),
            "country": "Colombia",
        }
        self.until_ok(lambda: self.call("POST", "/api/auth/signup", "POST /api/auth/signup", expected=201, json=body))
        self.login(email)

    @task
    def browse_vote_rankings_mine(self):
        videos = self.gallery_page()
        fresh = [v["video_id"] for v in videos if v["video_id"] not in self.voted]
        self.wait()
        if fresh:
            video_id = random.choice(fresh)
            # Marked before the answer: a vote that timed out may still count.
            self.voted.add(video_id)
            self.call("POST", f"/api/public/videos/{video_id}/vote", "POST /api/public/videos/{id}/vote")
            self.wait()
        self.rankings()
        self.wait()
        self.call("GET", "/api/videos", "GET /api/videos")


class Reader(Player):
    """Anonymous: the rankings (overall and a city) and a page of the public gallery."""

    @task
    def read(self):
        self.rankings()
        self.wait()
        self.gallery_page()
