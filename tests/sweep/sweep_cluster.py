"""A real Ray cluster, a real S3 server and a bare git remote on 127.0.0.1, for the Ray sweep tests and benchmark.

Everything here is started as separate processes and stopped by its own process id: the S3 server is moto's
server mode (``moto_server``), the Ray head and each worker node are ``ray start --block`` processes (a
``--block`` node stops its raylet and workers when it gets SIGTERM).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

BIN = Path(sys.executable).parent
BUCKET = "aipc-sweep"
NODE_FLAGS = ["--block", "--disable-usage-stats", "--object-store-memory", str(80 * 2**20), "--include-log-monitor", "false"]
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, deadline_s: float = 120) -> None:
    """Wait until ``port`` accepts connections (or fail if ``proc`` died or it never did)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode} before listening on {port}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not listen on {port} within {deadline_s} s")


@dataclass
class Cluster:
    """What the tests need to know about the services they started."""

    address: str
    endpoint: str
    env: dict[str, str]  # the environment of every node (and of the driver)
    node_cache: Path
    scratch: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    workers: list[subprocess.Popen] = field(default_factory=list)

    def s3(self):  # noqa: ANN201 - a boto3 client
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=CREDENTIALS["AWS_DEFAULT_REGION"],
            aws_access_key_id=CREDENTIALS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        )

    def objects(self) -> dict[str, bytes]:
        """Every object in the bucket: key -> contents."""
        client, out = self.s3(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
            for item in page.get("Contents", []):
                out[item["Key"]] = client.get_object(Bucket=BUCKET, Key=item["Key"])["Body"].read()
        return out


def node_env(tmp: Path) -> dict[str, str]:
    """The environment of the nodes: the venv first on PATH, offline, S3 credentials, node cache and scratch."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(CREDENTIALS)
    env.update(
        PATH=os.pathsep.join([str(BIN), os.environ["PATH"]]),
        HF_HUB_OFFLINE="1",
        RAY_USAGE_STATS_ENABLED="0",
        RAY_memory_monitor_refresh_ms="0",  # other jobs share this machine: Ray must not kill points for their RSS
        AIPC_SWEEP_CACHE=str(tmp / "node-cache"),
        AIPC_SWEEP_SCRATCH=str(tmp / "scratch"),
    )
    return env


def stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each process we started (by its id), then SIGKILL whatever did not stop in 30 s."""
    for proc in reversed(procs):
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in reversed(procs):
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def local_cluster(tmp: Path, workers: int = 2) -> Iterator[Cluster]:
    """moto's S3 server with one bucket, a Ray head (no CPUs: it schedules only) and ``workers`` worker nodes."""
    import tempfile

    tmp.mkdir(parents=True, exist_ok=True)
    env = node_env(tmp)
    procs: list[subprocess.Popen] = []
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must stay short
    log = open(tmp / "services.log", "w")  # noqa: SIM115 - closed below
    try:
        s3_port = free_port()
        moto = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(s3_port)], env=env, stdout=log, stderr=log)
        procs.append(moto)
        wait_for_port(s3_port, moto, "moto_server")
        endpoint = f"http://127.0.0.1:{s3_port}"
        port = free_port()
        head = subprocess.Popen(
            [str(BIN / "ray"), "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(port),
             "--num-cpus", "0", "--include-dashboard", "false", "--temp-dir", ray_tmp, *NODE_FLAGS],
            env=env, stdout=log, stderr=log,
        )
        procs.append(head)
        wait_for_port(port, head, "ray head")
        cluster = Cluster(f"127.0.0.1:{port}", endpoint, env, tmp / "node-cache", tmp / "scratch", procs)
        while alive_nodes(cluster) < 1:
            if head.poll() is not None:
                raise RuntimeError(f"the Ray head exited with {head.returncode} (see {tmp / 'services.log'})")
            time.sleep(2)
        for _ in range(workers):  # one at a time: on a busy 2-core machine two raylets may miss Ray's 30 s start
            cluster.workers.append(start_worker(cluster, log))
        cluster.s3().create_bucket(Bucket=BUCKET)
        yield cluster
    finally:
        stop(procs)
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)


def alive_nodes(cluster: Cluster) -> int:
    """How many nodes of the cluster are alive (asked by a short-lived driver)."""
    probe = (
        f"import ray, json; ray.init(address={cluster.address!r}, logging_level='ERROR'); "
        "print(json.dumps(sum(n['Alive'] for n in ray.nodes())))"
    )
    done = subprocess.run([sys.executable, "-c", probe], env=cluster.env, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1]) if done.returncode == 0 else 0


def start_worker(cluster: Cluster, log: IO[str], tries: int = 3, worker_memory_gib: float = 2.5) -> subprocess.Popen:
    """Start one worker node and wait until it has joined; start it again if Ray gave up on it (busy machine)."""
    want = alive_nodes(cluster) + 1
    for _ in range(tries):
        worker = subprocess.Popen(
            [str(BIN / "ray"), "start", "--address", cluster.address, "--node-ip-address", "127.0.0.1",
             "--num-cpus", "1", "--memory", str(int(worker_memory_gib * 2**30)), *NODE_FLAGS],
            env=cluster.env, stdout=log, stderr=log,
        )
        cluster.procs.append(worker)
        while worker.poll() is None:
            if alive_nodes(cluster) >= want:
                return worker
            time.sleep(2)
    raise RuntimeError(f"a Ray worker node did not join {cluster.address} in {tries} tries (see services.log)")
