"""The clients of a fault run: threads that each keep one HTTP connection to the API and
record every request (when it started and ended, its status, whether a 503 said
Retry-After), and the accepted votes and uploads the run checks afterwards."""

import http.client
import json
import random
import re
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field

PASSWORD = "fallas-bajo-carga-2026"
CITIES = ["Bogotá", "Medellín", "Cali", "Barranquilla"]
VIDEO_ID = re.compile(r'"video_id"\s*:\s*"([^"]+)"')


@dataclass
class Request:
    client: int
    name: str
    started: float
    ended: float
    status: object  # an HTTP status, or "timeout" / "reset"
    retry_after: bool

    @property
    def seconds(self):
        return self.ended - self.started

    @property
    def ok(self):
        return isinstance(self.status, int) and 200 <= self.status < 300


@dataclass
class Record:
    """What the clients saw and what the API accepted, shared by every client thread."""

    requests: list = field(default_factory=list)
    votes: list = field(default_factory=list)  # (email, video_id) answered 2xx
    uploads: list = field(default_factory=list)  # (video id, when) of the uploads answered 201
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, request):
        with self.lock:
            self.requests.append(request)


class Connection:
    """One kept-alive connection, opened again after the API or the network closed it."""

    def __init__(self, port, timeout):
        self.port = port
        self.timeout = timeout
        self.conn = None

    def request(self, method, path, body=None, headers=None):
        """(status or "timeout"/"reset", headers, body bytes)."""
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.conn.request(method, path, body=body, headers=headers or {})
                response = self.conn.getresponse()
                data = response.read()
                if response.getheader("connection", "").lower() == "close":
                    self.close()
                return response.status, response.headers, data
            except TimeoutError:
                self.close()
                return "timeout", {}, b""
            except (ConnectionError, http.client.HTTPException, OSError):
                # A kept-alive connection the server closed meanwhile: once more on a new one.
                self.close()
                if attempt == 2:
                    return "reset", {}, b""
        return "reset", {}, b""

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def multipart(clip):
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"title\"\r\n\r\nJugada bajo falla\r\n"
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"video_file\"; filename=\"clip.mp4\"\r\n"
        "Content-Type: video/mp4\r\n\r\n"
    ).encode()
    return f"multipart/form-data; boundary={boundary}", head + clip + f"\r\n--{boundary}--\r\n".encode()


class Client(threading.Thread):
    """A person: signs up and logs in once, then loops over the scenario's steps until
    `stop` is set. `kind` is "journey" (gallery, vote, rankings, now and then an upload,
    their videos) or "upload" (upload, their videos)."""

    def __init__(self, n, kind, port, record, stop, clip, tag, timeout, think):
        super().__init__(daemon=True, name=f"client-{n}")
        self.n = n
        self.kind = kind
        self.record = record
        self.stop = stop
        self.connection = Connection(port, timeout)
        self.content_type, self.upload_body = multipart(clip)
        self.email = f"falla-{tag}-{n}@carga.test"
        self.think = think
        self.headers = {"X-Forwarded-For": f"10.77.{n // 250}.{n % 250 + 1}"}
        self.token = None
        self.voted = set()
        self.ready = threading.Event()
        self.failed_start = None
        self.crashed = None

    def call(self, method, path, name, body=None, content_type=None):
        headers = dict(self.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if body is not None:
            if not isinstance(body, bytes):
                body = json.dumps(body).encode()
                content_type = "application/json"
            headers["Content-Type"] = content_type
        started = time.time()
        status, response_headers, data = self.connection.request(method, path, body, headers)
        retry_after = bool(response_headers.get("retry-after")) if response_headers else False
        self.record.add(Request(self.n, name, started, time.time(), status, retry_after))
        return status, data

    def until(self, expected, method, path, name, body=None, tries=40):
        for _ in range(tries):
            status, data = self.call(method, path, name, body)
            if status == expected:
                return data
            time.sleep(random.uniform(0.3, 1.0))
        raise RuntimeError(f"{name} never answered {expected} (last {status}: {data[:200]!r})")

    def run(self):
        try:
            self.until(201, "POST", "/api/auth/signup", "signup", {
                "first_name": "Aficionada", "last_name": "Falla", "email": self.email,
                "password1": PASSWORD, "password2": PASSWORD, "city": random.choice(CITIES), "country": "Colombia",
            })
            data = self.until(200, "POST", "/api/auth/login", "login", {"email": self.email, "password": PASSWORD})
            self.token = json.loads(data)["access_token"]
        except Exception as error:  # noqa: BLE001  reported by the run
            self.failed_start = str(error)
            self.ready.set()
            return
        self.ready.set()
        try:
            self.loop()
        except Exception as error:  # noqa: BLE001  reported by the run
            self.crashed = f"{type(error).__name__}: {error}"
        self.connection.close()

    def loop(self):
        steps = 0
        while not self.stop.is_set():
            steps += 1
            if self.kind == "journey":
                self.journey_step(upload=steps % 4 == 0)
            else:
                self.upload()
                self.pause()
                self.call("GET", "/api/videos", "my videos")
            self.pause()

    def pause(self):
        self.stop.wait(random.uniform(*self.think))

    def journey_step(self, upload):
        status, data = self.call("GET", f"/api/public/videos?page={random.randint(1, 5)}&limit=20", "gallery")
        if status == 200:
            fresh = [v["video_id"] for v in json.loads(data) if v["video_id"] not in self.voted]
            if fresh:
                video_id = random.choice(fresh)
                self.voted.add(video_id)
                self.pause()
                status, _ = self.call("POST", f"/api/public/videos/{video_id}/vote", "vote")
                if isinstance(status, int) and 200 <= status < 300:
                    with self.record.lock:
                        self.record.votes.append((self.email, video_id))
        self.pause()
        self.call("GET", "/api/public/rankings", "rankings")
        city = urllib.parse.quote(random.choice(CITIES))
        self.call("GET", f"/api/public/rankings?city={city}", "rankings by city")
        if upload:
            self.pause()
            self.upload()
        self.pause()
        self.call("GET", "/api/videos", "my videos")

    def upload(self):
        status, data = self.call("POST", "/api/videos/upload", "upload", self.upload_body, self.content_type)
        if status == 201:
            match = VIDEO_ID.search(data.decode(errors="replace"))
            with self.record.lock:
                self.record.uploads.append((match.group(1) if match else None, time.time()))
