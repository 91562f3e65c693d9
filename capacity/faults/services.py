"""The servers a fault run starts for itself (PostgreSQL, Redis, anb-api) and the
S3/SQS resources it makes on the shared stand-in, each removed again by `stop`/`remove`."""

import os
import pwd
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

from common import die, free_port, stop_process, wait_until_ready

PG_BIN = sorted(Path("/usr/lib/postgresql").glob("*/bin"))


def as_postgres(command):
    """initdb and postgres refuse to run as root: run them as the `postgres` account then."""
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *command]
    return command


class PrivatePostgres:
    """A PostgreSQL server of this run only: a cluster in a temp dir, on a free port."""

    def __init__(self, scratch):
        if not PG_BIN:
            die("no PostgreSQL server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)")
        self.bin = PG_BIN[-1]
        self.dir = scratch / "pg"
        self.port = free_port()
        self.started = False

    def start(self):
        self.dir.mkdir()
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            os.chown(self.dir, account.pw_uid, account.pw_gid)
        data = self.dir / "data"
        subprocess.run(
            as_postgres([str(self.bin / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync",
                         "-E", "UTF8", "--locale", "C"]),
            check=True, stdout=subprocess.DEVNULL, timeout=120,
        )
        # Never crashed, only cut off: fsync buys nothing here.
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
        subprocess.run(
            as_postgres([str(self.bin / "pg_ctl"), "-D", str(data), "-l", str(self.dir / "log"), "-o", options,
                         "-w", "-t", "60", "start"]),
            check=True, stdout=subprocess.DEVNULL, timeout=90,
        )
        self.started = True

    def url(self, database, port=None):
        return f"postgres://postgres@127.0.0.1:{port or self.port}/{database}"

    def create_database(self, name):
        self.psql("postgres", f'CREATE DATABASE "{name}"')

    def psql(self, database, sql):
        """Rows of `sql` (tab-separated fields), straight to the server, never through a gate."""
        result = subprocess.run(
            ["psql", self.url(database), "-AtqX", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-c", sql],
            check=True, capture_output=True, text=True, timeout=60,
        )
        return [line.split("\t") for line in result.stdout.splitlines() if line]

    def stop(self):
        if self.started:
            subprocess.run(
                as_postgres([str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "immediate", "-w",
                             "stop"]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60,
            )
            self.started = False


class PrivateRedis:
    """A redis-server of this run only, in memory, on a free port."""

    def __init__(self, scratch):
        self.dir = scratch / "redis"
        self.port = free_port()
        self.process = None

    def start(self):
        self.dir.mkdir()
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
             "--save", "", "--appendonly", "no"],
            stdout=open(self.dir / "log", "wb"), stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 20
        while self.cli("PING") != "PONG":
            if time.time() > deadline or self.process.poll() is not None:
                die("the private redis-server did not start")
            time.sleep(0.1)

    def cli(self, *args):
        result = subprocess.run(
            ["redis-cli", "-h", "127.0.0.1", "-p", str(self.port), *args],
            capture_output=True, text=True, timeout=30,
        )
        return result.stdout.strip()

    def payloads(self):
        """The payload of every job the Redis queue holds, whatever its state."""
        script = (
            "local r = {} for _, k in ipairs(redis.call('KEYS', ARGV[1])) do "
            "r[#r + 1] = redis.call('HGET', k, 'p') end return r"
        )
        return self.cli("EVAL", script, "0", "anb_queue:*job:*").splitlines()

    def stop(self):
        if self.process and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)


class SqsQueue:
    """A queue and its dead-letter queue on the shared S3/SQS stand-in, and an S3 bucket.
    The stand-in keeps its state in memory and serves other tests: it is never stopped, and
    what this run made there is deleted at the end."""

    def __init__(self, endpoint):
        import boto3

        self.endpoint = endpoint
        self.sqs = boto3.client("sqs", endpoint_url=endpoint, region_name="us-east-1")
        self.s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        tag = uuid.uuid4().hex[:10]
        self.name = f"anb-faults-{tag}"
        self.bucket = f"anb-faults-{tag}"
        self.url = self.dead_url = None
        self.bucket_made = False

    def create(self):
        self.dead_url = self.sqs.create_queue(QueueName=f"{self.name}-dead")["QueueUrl"]
        arn = self.sqs.get_queue_attributes(QueueUrl=self.dead_url, AttributeNames=["QueueArn"])
        redrive = f'{{"deadLetterTargetArn":"{arn["Attributes"]["QueueArn"]}","maxReceiveCount":"5"}}'
        self.url = self.sqs.create_queue(QueueName=self.name, Attributes={"RedrivePolicy": redrive})["QueueUrl"]
        self.s3.create_bucket(Bucket=self.bucket)
        self.bucket_made = True

    def url_through(self, port):
        """The queue's URL with its host replaced by the gate's: the URL is also the endpoint."""
        return re.sub(r"^https?://[^/]+", f"http://127.0.0.1:{port}", self.url)

    def receive(self, rounds=20):
        """Takes and deletes the messages there now, as a consumer would (at most `rounds`
        receives of 10): the stand-in slows down as its queue grows."""
        bodies = []
        for _ in range(rounds):
            answer = self.sqs.receive_message(
                QueueUrl=self.url, MaxNumberOfMessages=10, VisibilityTimeout=600, WaitTimeSeconds=0
            )
            messages = answer.get("Messages", [])
            if not messages:
                break
            bodies += [m["Body"] for m in messages]
            self.sqs.delete_message_batch(
                QueueUrl=self.url,
                Entries=[{"Id": str(n), "ReceiptHandle": m["ReceiptHandle"]} for n, m in enumerate(messages)],
            )
        return bodies

    def remove(self):
        for url in (self.url, self.dead_url):
            if url:
                try:
                    self.sqs.delete_queue(QueueUrl=url)
                except Exception:  # noqa: BLE001  best effort at exit
                    pass
        if self.bucket_made:
            try:
                for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
                    keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                    if keys:
                        self.s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})
                self.s3.delete_bucket(Bucket=self.bucket)
            except Exception:  # noqa: BLE001
                pass


class Api:
    """anb-api on a given database, queue and storage, on a free port; its log in the scratch dir."""

    def __init__(self, binary, scratch, name, env):
        self.binary = binary
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = scratch / f"{name}-api.log"
        self.env = {
            "PATH": os.environ["PATH"],
            "RUST_LOG": os.environ.get("RUST_LOG", "warn"),
            "ANB_HTTP_ADDR": f"127.0.0.1:{self.port}",
            "ANB_JWT_SECRET": os.urandom(32).hex(),
            # Rate limits configured, not fought: each client is its own address.
            "ANB_TRUSTED_PROXIES": "127.0.0.1",
            "ANB_UPLOAD_RATE_PER_USER": "off",
            "ANB_UPLOAD_QUOTA_BYTES": "off",
            "ANB_UPLOAD_QUOTA_VIDEOS": "off",
            **env,
        }
        for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_REGION"):
            self.env.setdefault(key, os.environ.get(key, "test" if "KEY" in key else "us-east-1"))
        self.process = None

    def start(self):
        with open(self.log_path, "ab") as log:
            subprocess.run([str(self.binary), "migrate"], env=self.env, stdout=log, stderr=log, check=True,
                           timeout=120)
            self.process = subprocess.Popen([str(self.binary)], env=self.env, stdout=log, stderr=log)
        wait_until_ready(self.process, self.base, self.log_path, "anb-api")

    def stop(self):
        stop_process(self.process, grace=20)


def make_tiny_clip(path):
    """A valid upload (1920x1080, 21 s) of a few kilobytes: one flat colour at 5 frames/s,
    so dozens of clients can upload often without filling the stand-in's memory."""
    if path.exists():
        return
    partial = path.with_suffix(".partial.mp4")
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-f", "lavfi",
         "-i", "color=c=0x2a6f3c:size=1920x1080:rate=5:duration=21", "-pix_fmt", "yuv420p",
         "-c:v", "libx264", "-preset", "ultrafast", "-movflags", "+faststart", str(partial)],
        check=True, timeout=120,
    )
    partial.rename(path)


def remove(path):
    shutil.rmtree(path, ignore_errors=True)
