#!/usr/bin/env python3
"""Figures for the API's edge under hostile load, printed for a person.

    anb-api/benches/edge.py path/to/anb-api

Starts the given `anb-api` binary on 127.0.0.1 twice, each time on a scratch
PostgreSQL database (on ANB_TEST_POSTGRES_URL's server, reached through a TCP
gate this script runs) and a scratch local storage directory, and measures:

1. the API's peak resident memory (VmHWM) while 50 clients at once each send
   a 10 MB JSON body to log-in (raw sockets, `Content-Length` declared, no
   `Expect: 100-continue`, the whole body sent before the answer is read);
2. the answer time of an authenticated request while the database is out
   (the gate cuts every connection and hangs up new ones), then while it is
   partitioned (connections stay up, nothing gets through), and the time to
   recover once it reopens.

Standard library only; traffic to 127.0.0.1 only, bounded in count and time.
Needs `psql` for the scratch database. Run it against two builds of the same
profile to compare them.
"""

import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid

PG_URL = os.environ.get("ANB_TEST_POSTGRES_URL", "postgres://postgres:postgres@127.0.0.1:5432/postgres")
CLIENTS = 50
BODY_BYTES = 10 * 1024 * 1024


class Gate:
    """A TCP proxy to `target` that can be closed (cutting every connection)
    and reopened."""

    def __init__(self, target):
        self.target = target
        self.open = True
        self.silent = False
        self.conns = []
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            client, _ = self.listener.accept()
            if self.silent:
                with self.lock:
                    self.conns.append(client)  # held open, never answered
                continue
            if not self.open:
                client.close()
                continue
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src, dst):
        try:
            while data := src.recv(65536):
                while self.silent:
                    time.sleep(0.05)  # a network that drops packets
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.open = False
        with self.lock:
            for s in self.conns:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.conns = []

    def black_hole(self):
        """Connections stay up but nothing gets through (a partition)."""
        self.silent = True

    def reopen(self):
        self.open = True
        self.silent = False


def http(port, method, path, body=None, token=None, timeout=60):
    """One request over a fresh connection: (status, parsed JSON or None)."""
    data = json.dumps(body).encode() if body is not None else b""
    head = f"{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {len(data)}\r\n"
    if body is not None:
        head += "Content-Type: application/json\r\n"
    if token:
        head += f"Authorization: Bearer {token}\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode() + b"\r\n" + data)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    status = int(raw.split(b" ", 2)[1])
    payload = raw.split(b"\r\n\r\n", 1)[1]
    try:
        return status, json.loads(payload)
    except ValueError:
        return status, None


def rss_peak_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def flood_login(port):
    """50 clients at once, each a 10 MB JSON body: what each got back."""
    results = []
    prefix = b'{"email":"flood@example.com","password":"'
    suffix = b'"}'
    filler = b"x" * (1 << 20)

    def client():
        head = (
            "POST /api/auth/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {BODY_BYTES}\r\nConnection: close\r\n\r\n"
        ).encode()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
                s.sendall(head + prefix)
                left = BODY_BYTES - len(prefix) - len(suffix)
                while left > 0:
                    n = min(left, len(filler))
                    s.sendall(filler[:n])
                    left -= n
                s.sendall(suffix)
                raw = s.recv(4096)
                results.append(raw.split(b" ", 2)[1].decode() if raw else "no answer")
        except OSError as e:
            results.append(type(e).__name__)

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def main():
    binary = os.path.abspath(sys.argv[1])
    pg = urllib.parse.urlparse(PG_URL)
    gate = Gate((pg.hostname, pg.port or 5432))
    db = "anb_edge_bench_" + uuid.uuid4().hex[:8]
    subprocess.run(["psql", PG_URL, "-qc", f"CREATE DATABASE {db}"], check=True)
    work = tempfile.mkdtemp(prefix="anb-edge-bench-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    creds = f"{pg.username or 'postgres'}" + (f":{pg.password}" if pg.password else "")
    env = dict(
        os.environ,
        ANB_DATABASE_URL=f"postgres://{creds}@127.0.0.1:{gate.port}/{db}",
        ANB_STORAGE_URL=os.path.join(work, "media"),
        ANB_JWT_SECRET="edge-bench-secret-of-more-than-32-bytes!!",
        ANB_HTTP_ADDR=f"127.0.0.1:{port}",
        ANB_RATE_LIMIT_LOGIN_PER_IP="off",
        ANB_RATE_LIMIT_LOGIN_PER_ACCOUNT="off",
        ANB_RATE_LIMIT_SIGNUP_PER_IP="off",
        RUST_LOG="warn",
    )
    server = None
    try:
        subprocess.run([binary, "migrate"], env=env, check=True)
        server = subprocess.Popen([binary, "serve"], env=env)
        for _ in range(100):
            try:
                if http(port, "GET", "/health", timeout=1)[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        email = f"edge-{uuid.uuid4().hex[:8]}@example.com"
        signup = {
            "first_name": "Ana", "last_name": "Gómez", "email": email,
            "password1": "a-long-password", "password2": "a-long-password",
            "city": "Bogotá", "country": "Colombia",
        }
        assert http(port, "POST", "/api/auth/signup", signup)[0] == 201
        status, token = http(port, "POST", "/api/auth/login", {"email": email, "password": "a-long-password"})
        assert status == 200, token
        token = token["access_token"]

        before = rss_peak_kib(server.pid)
        started = time.monotonic()
        answers = flood_login(port)
        elapsed = time.monotonic() - started
        peak = rss_peak_kib(server.pid)
        counts = {a: answers.count(a) for a in sorted(set(answers))}
        print(f"login flood: {CLIENTS} clients x {BODY_BYTES // (1 << 20)} MB JSON: "
              f"peak RSS {before / 1024:.0f} MiB before -> {peak / 1024:.0f} MiB after "
              f"({elapsed:.1f} s); answers {counts}")

        assert http(port, "GET", "/api/videos", token=token)[0] == 200
        gate.close()
        for attempt in range(3):
            started = time.monotonic()
            try:
                status, body = http(port, "GET", "/api/videos", token=token, timeout=90)
                code = (body or {}).get("code")
            except OSError as e:
                status, code = type(e).__name__, None
            print(f"database outage, request {attempt + 1}: {status} {code} after "
                  f"{time.monotonic() - started:.2f} s")
        gate.reopen()
        assert http(port, "GET", "/api/videos", token=token)[0] == 200
        gate.black_hole()
        started = time.monotonic()
        try:
            status, body = http(port, "GET", "/api/videos", token=token, timeout=90)
            code = (body or {}).get("code")
        except OSError as e:
            status, code = type(e).__name__, None
        print(f"database partition (nothing gets through): {status} {code} after "
              f"{time.monotonic() - started:.2f} s")
        gate.reopen()
        started = time.monotonic()
        while time.monotonic() - started < 60:
            try:
                if http(port, "GET", "/api/videos", token=token, timeout=90)[0] == 200:
                    print(f"database back: 200 again after {time.monotonic() - started:.2f} s")
                    break
            except OSError:
                pass
            time.sleep(0.2)
        else:
            print("database back: no 200 within 60 s")
    finally:
        if server:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        subprocess.run(["psql", PG_URL, "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"])
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
