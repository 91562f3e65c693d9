#!/usr/bin/env python3
"""A player's log-in while others flood log-in (capacity/login-flood/README.md).

Starts `anb serve --no-worker` on 127.0.0.1 twice, with the per-client bound of
the password-hashing line off (ANB_PASSWORD_HASH_QUEUE_PER_CLIENT=0) and on (2,
the default), and in each: a player logs in N times in sequence, first alone,
then while FLOODERS concurrent log-ins with a wrong password run without pause
from one address, then from FLOODERS addresses (X-Forwarded-For, believed from
127.0.0.1 as from a load balancer). Prints the player's median and p95 latency
and status counts side by side. Standard library only; traffic only to
127.0.0.1; every phase is bounded in count and time.
"""

import argparse
import asyncio
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import cpu_seconds, free_port, say  # noqa: E402

PLAYER_IP = "198.51.100.7"
PASSWORD = "una-contrasena-larga"
EMAIL = "jugadora@example.com"


def own_cpu_seconds():
    t = os.times()
    return t.user + t.system


class Server:
    """`anb serve --no-worker` on a scratch data directory."""

    def __init__(self, binary, scratch, per_client):
        self.port = free_port()
        self.data = os.path.join(scratch, f"data-{per_client}")
        self.log_path = os.path.join(scratch, f"serve-{per_client}.log")
        # The fraud limits are off, as in load tests: the bench looks at the
        # hashing line alone (the per-IP log-in rate would otherwise refuse a
        # one-address flood after its first burst of 60).
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RUST_LOG": "warn",
            "ANB_TRUSTED_PROXIES": "127.0.0.1",
            "ANB_RATE_LIMIT_LOGIN_PER_IP": "off",
            "ANB_RATE_LIMIT_SIGNUP_PER_IP": "off",
            "ANB_LOGIN_BACKOFF": "off",
            "ANB_PASSWORD_HASH_QUEUE_PER_CLIENT": str(per_client),
        }
        self.binary = binary
        self.process = None

    def start(self):
        self.log = open(self.log_path, "wb")
        self.process = subprocess.Popen(
            [self.binary, "serve", "--no-worker", "--addr", f"127.0.0.1:{self.port}", "--data-dir", self.data],
            env=self.env, stdout=self.log, stderr=self.log,
        )
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                sys.exit(f"error: the server exited at start:\n{open(self.log_path).read()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        sys.exit("error: the server did not answer /health within 60 s")

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.log.close()


class Connection:
    """One kept-alive HTTP/1.1 connection; reopened when the server closes it."""

    def __init__(self, port):
        self.port = port
        self.reader = self.writer = None

    async def post_json(self, path, body, forwarded_for, timeout):
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
            f"X-Forwarded-For: {forwarded_for}\r\n\r\n"
        ).encode()
        for attempt in (1, 2):
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
            try:
                self.writer.write(head + payload)
                await self.writer.drain()
                return await asyncio.wait_for(self._response(), timeout)
            except (ConnectionError, asyncio.IncompleteReadError) as error:
                # A kept-alive connection the server closed meanwhile: once more
                # on a new one.
                self.close()
                if attempt == 2:
                    raise error
            except asyncio.TimeoutError:
                self.close()
                return "timeout", b""

    async def _response(self):
        status_line = await self.reader.readuntil(b"\r\n")
        status = int(status_line.split()[1])
        length, keep = 0, True
        while True:
            line = await self.reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and value.strip().lower() == "close":
                keep = False
        body = await self.reader.readexactly(length)
        if not keep:
            self.close()
        return status, body

    def close(self):
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def player_logins(port, count, deadline):
    """The player logs in `count` times in sequence; (seconds, status) each."""
    connection = Connection(port)
    results = []
    for _ in range(count):
        if time.monotonic() > deadline:
            break
        started = time.monotonic()
        status, _ = await connection.post_json(
            "/api/auth/login", {"email": EMAIL, "password": PASSWORD}, PLAYER_IP, timeout=30
        )
        results.append((time.monotonic() - started, status))
    connection.close()
    return results


async def flood(port, addresses, flooders, stop, counts):
    """`flooders` log-ins at all times (each sent again as soon as it is
    answered), with a wrong password, from `addresses` in turn."""

    async def one(i):
        connection = Connection(port)
        address = addresses[i % len(addresses)]
        try:
            while not stop.is_set():
                try:
                    status, _ = await connection.post_json(
                        "/api/auth/login", {"email": f"flood{i}@example.com", "password": "wrong-password"},
                        address, timeout=30,
                    )
                except OSError:
                    status = "error"
                    await asyncio.sleep(0.05)
                counts[status] = counts.get(status, 0) + 1
        finally:
            connection.close()

    await asyncio.gather(*(one(i) for i in range(flooders)))


async def phase(port, flood_from, flooders, count, limit_seconds):
    """The player's log-ins with the flood of `flood_from` addresses running
    (none: no flood). Returns the player's results and the flood's counts."""
    counts = {}
    stop = asyncio.Event()
    flooding = None
    if flood_from:
        addresses = ["203.0.113.9"] if flood_from == 1 else [f"10.{i // 250}.{i % 250}.1" for i in range(flood_from)]
        flooding = asyncio.create_task(flood(port, addresses, flooders, stop, counts))
        # Let the flood fill the line before the player comes.
        await asyncio.sleep(1.0)
    deadline = time.monotonic() + limit_seconds
    results = await player_logins(port, count, deadline)
    if flooding:
        stop.set()
        await asyncio.wait_for(flooding, 40)
    return results, counts


def signup(port):
    body = json.dumps({
        "first_name": "Ana", "last_name": "Gómez", "email": EMAIL, "password1": PASSWORD,
        "password2": PASSWORD, "city": "Bogotá", "country": "Colombia",
    }).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/auth/signup", data=body, method="POST",
        headers={"content-type": "application/json", "x-forwarded-for": PLAYER_IP},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201, response.status


def percentile(values, fraction):
    if not values:
        return float("nan")
    ordered = sorted(values)
    # Nearest rank: the smallest value with `fraction` of them at or below it.
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def summary(results):
    times = [t * 1000 for t, _ in results]
    statuses = {}
    for _, status in results:
        statuses[status] = statuses.get(status, 0) + 1
    ok = [t * 1000 for t, s in results if s == 200]
    return {
        "median": statistics.median(times) if times else float("nan"),
        "p95": percentile(times, 0.95),
        "ok_median": statistics.median(ok) if ok else float("nan"),
        "ok_p95": percentile(ok, 0.95),
        "statuses": " ".join(f"{k}×{v}" for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bin", required=True, help="the anb binary (anb serve)")
    parser.add_argument("--logins", type=int, default=100, help="the player's log-ins per phase (100)")
    parser.add_argument("--flooders", type=int, default=200, help="concurrent flooding log-ins (200)")
    parser.add_argument("--phase-seconds", type=float, default=120, help="upper bound of a phase (120 s)")
    parser.add_argument("--per-client", type=int, default=2, help="the bound when on (2, the default)")
    parser.add_argument("--quick", action="store_true",
                        help="seconds: 5 log-ins, 50 flooders, 15 s phases; fails on an unexpected answer")
    args = parser.parse_args()
    if args.quick:
        args.logins, args.flooders, args.phase_seconds = 5, 50, 15
    binary = os.path.abspath(args.bin)
    scratch = tempfile.mkdtemp(prefix="anb-login-flood-")
    rows = {}
    unexpected = []
    try:
        for label, per_client in (("bound off", 0), ("bound on", args.per_client)):
            server = Server(binary, scratch, per_client)
            say(f"{label}: anb serve (ANB_PASSWORD_HASH_QUEUE_PER_CLIENT={per_client}) on 127.0.0.1:{server.port}")
            server.start()
            try:
                signup(server.port)
                for flood_from, name in ((0, "no flood"), (1, "flood from 1 address"),
                                         (args.flooders, f"flood from {args.flooders} addresses")):
                    say(f"{label}: {name}: {args.logins} log-ins"
                        + (f" beside {args.flooders} concurrent flooding log-ins" if flood_from else ""))
                    started = (time.monotonic(), cpu_seconds(server.process.pid), own_cpu_seconds())
                    results, counts = asyncio.run(
                        phase(server.port, flood_from, args.flooders, args.logins, args.phase_seconds))
                    elapsed = time.monotonic() - started[0]
                    cpu = (100 * (cpu_seconds(server.process.pid) - started[1]) / elapsed,
                           100 * (own_cpu_seconds() - started[2]) / elapsed)
                    rows[(name, label)] = (summary(results), counts, len(results), cpu)
                    for _, status in results:
                        if status not in (200, 503):
                            unexpected.append(f"{label}, {name}: the player got {status}")
                    for status in counts:
                        if status not in (401, 429, 503):
                            unexpected.append(f"{label}, {name}: a flooding log-in got {status} ×{counts[status]}")
                    if per_client and flood_from == 1 and any(s != 200 for _, s in results):
                        unexpected.append(f"{label}, {name}: the player was refused")
                if server.process.poll() is not None:
                    unexpected.append(f"{label}: the server exited")
            finally:
                server.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print(f"\nThe player's {args.logins} log-ins in sequence (ms; statuses), {args.flooders} concurrent flooding "
          f"log-ins, {os.cpu_count()} CPUs, {os.path.basename(os.path.dirname(binary))} build:\n")
    print("| phase | per-client bound | median | p95 | median of 200s | p95 of 200s | player's statuses "
          "| flood's statuses | server CPU % | generator CPU % |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (name, label), (s, counts, _, (server_cpu, own_cpu)) in rows.items():
        flood_counts = " ".join(f"{k}×{v}" for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))) or "—"
        ms = {k: "—" if math.isnan(v) else f"{v:.0f}" for k, v in s.items() if k != "statuses"}
        print(f"| {name} | {label} | {ms['median']} | {ms['p95']} | {ms['ok_median']} | {ms['ok_p95']} "
              f"| {s['statuses']} | {flood_counts} | {server_cpu:.0f} | {own_cpu:.0f} |")
    for (name, label), (_, _, done, _) in rows.items():
        if done < args.logins:
            print(f"\nnote: {label}, {name}: {done} of {args.logins} log-ins within {args.phase_seconds:.0f} s")
    if unexpected:
        print("\nunexpected:\n  " + "\n  ".join(unexpected), file=sys.stderr)
        if args.quick:
            sys.exit(1)


if __name__ == "__main__":
    main()
