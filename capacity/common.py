"""What the capacity harnesses share: messages, a free port, JSON over HTTP, a process's CPU time,
the machine they ran on."""

import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request


def say(message):
    print(f"==> {message}", file=sys.stderr, flush=True)


def die(message):
    print(f"error: {message}", file=sys.stderr, flush=True)
    sys.exit(1)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method, url, body=None, token=None, timeout=60):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("content-type", "application/json")
    if token:
        request.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def wait_until_ready(process, base, log_path, what, seconds=60):
    """Waits for `GET base/ready` to answer 200 from `process`; dies with the end of its log
    when it exits or is not ready in time."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if process.poll() is not None:
            die(f"{what} exited at start:\n{log_path.read_text()[-2000:]}")
        try:
            if http("GET", f"{base}/ready", timeout=2)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    die(f"{what} was not ready on {base} within {seconds} s:\n{log_path.read_text()[-2000:]}")


def stop_process(process, grace):
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if process and process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """CPU time (user + system) process `pid` has used so far, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def machine_description():
    model = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1048576, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }
