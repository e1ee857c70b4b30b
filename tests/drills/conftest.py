"""Fault drills with live processes on loopback: a private redis-server the drill may kill and
restart, the platform worker (`manage.py run_platform_worker`) and `python -m gpu_worker`
processes with the demo models, all sharing one SQLite file.

Heartbeats are fast here (every 0.5 s, so a worker is declared dead ~3.5 s after it stops) to
keep each drill short; every other setting is the product's own. The drill reads the database
with sqlite3 directly, and checks the ledger with `manage.py check_ledger`.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Collection, Iterator
from itertools import count
from pathlib import Path
from typing import Any

import pytest
import redis

from operations.redis_server import PrivateRedis, free_port, start_private_redis
from tests.e2e.conftest import REPO, LivePlatform

HEARTBEAT_INTERVAL = 0.5  # the key lives 4x that; the platform's grace is 3x
WORKER_GRACE = 1.5
USERS = ("drill-ann", "drill-ben", "drill-cat")  # the default tier allows 2 unfinished jobs each
# A job that samples for a second or two on the CPU, so a drill can act while it runs. Its price
# (0.25) is exact in binary: check_ledger compares sums in SQL, which SQLite adds as floats.
JOB = {
    "prompt": "a lighthouse in a storm",
    "checkpoint": "atelier-demo-v1",
    "width": 256,
    "height": 128,
    "steps": 40,
    "sampler": "Euler a",
    "seed": 7,
}
# A job that samples for a minute or more on a CPU, so that three Redis outages fit in it; the
# default tier of the drills allows its steps (tests.drills.driver setup). Price 10, exact. (Past
# 1000 steps, the model's training timesteps, diffusers' Euler a fails at the last step.)
LONG_JOB = {**JOB, "width": 256, "height": 256, "steps": 800}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/drills" in str(item.fspath):
            item.add_marker(pytest.mark.drill)


class DrillWorld:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.models = root / "models"
        self.db_path = root / "atelier.sqlite3"
        self.procs = LivePlatform(base_url="", logs_dir=root / "logs")
        self.procs.logs_dir.mkdir(exist_ok=True)
        self.redis_port = free_port()
        self.redis_server: PrivateRedis | None = None
        self.env = {
            **os.environ,
            "DJANGO_SETTINGS_MODULE": "config.settings",
            "ATELIER_MODE": "development",
            "DEBUG": "false",
            "DATABASE_URL": f"sqlite:///{self.db_path}",
            "ATELIER_VAR_DIR": str(root / "var"),
            "MEDIA_ROOT": str(root / "media"),
            "MODELS_DIR": str(self.models),
            "REDIS_URL": f"redis://127.0.0.1:{self.redis_port}/0",
            "PYTHONUNBUFFERED": "1",
            "OMP_WAIT_POLICY": "PASSIVE",
        }
        self._ids = count(1)

    # --- processes -------------------------------------------------------------------------
    def run(self, *argv: str) -> str:
        done = subprocess.run(
            [sys.executable, *argv],
            cwd=REPO,
            env=self.env,
            timeout=120,
            capture_output=True,
            text=True,
        )
        assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr[-3000:]}"
        return done.stdout

    def start(self, name: str, argv: list[str]) -> subprocess.Popen:
        log = (self.procs.logs_dir / f"{name}.log").open("a")
        proc = subprocess.Popen(
            [sys.executable, *argv],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.procs.processes[name] = proc
        return proc

    def start_redis(self) -> None:
        self.redis_server = start_private_redis(self.root / "redis", port=self.redis_port)

    def stop_redis(self) -> None:
        if self.redis_server is not None:
            self.redis_server.process.kill()
            self.redis_server.process.wait()
            self.redis_server = None

    @property
    def redis(self) -> redis.Redis:
        return redis.Redis(port=self.redis_port, socket_connect_timeout=1)

    def redis_outage(self, seconds: float) -> None:
        """Redis goes away for `seconds`, then comes back empty."""
        self.stop_redis()
        time.sleep(seconds)
        self.start_redis()

    def start_platform(self, worker_grace: float = WORKER_GRACE) -> None:
        self.start(
            "platform",
            [
                "manage.py",
                "run_platform_worker",
                "--tick",
                "0.2",
                "--worker-grace",
                str(worker_grace),
                "--unreported-grace",
                "3",
            ],
        )

    def restart_platform(self, worker_grace: float = WORKER_GRACE) -> None:
        proc = self.signal("platform", signal.SIGTERM)
        proc.wait(timeout=60)
        self.start_platform(worker_grace)

    def start_gpu(self, preload: bool = True, worker_id: str | None = None) -> str:
        """A `python -m gpu_worker` (a new id unless `worker_id`: then a new life of that
        worker); returns its id. With `preload` it loads the demo checkpoint before taking jobs
        (`wait_ready` waits for that); without, it joins within seconds and loads on its first
        job."""
        worker_id = worker_id or f"gpu-{next(self._ids)}"
        argv = ["-m", "gpu_worker", "--models-dir", str(self.models), "--device", "cpu"]
        argv += ["--worker-id", worker_id, "--heartbeat-interval", str(HEARTBEAT_INTERVAL)]
        if preload:
            argv += ["--preload", "atelier-demo-v1"]
        self.start(worker_id, argv)
        return worker_id

    def wait_ready(self, *worker_ids: str, timeout: float = 60) -> None:
        def ready() -> bool:
            for worker_id in worker_ids:
                raw = self.redis.get(f"atelier:worker:{worker_id}")
                if not raw or "atelier-demo-v1" not in json.loads(raw)["loaded_models"]:
                    return False
            return True

        self.wait(ready, timeout, f"workers {worker_ids} ready")

    def signal(self, name: str, signum: int) -> subprocess.Popen:
        proc = self.procs.processes.pop(name)
        os.killpg(proc.pid, signum)
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        self.procs.processes.clear()

    def shut_down(self) -> None:
        """The end of a drill: every process asked to stop (killed after 15 s), their last log
        lines printed for the report, then Redis stopped."""
        for proc in self.procs.processes.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.procs.processes.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        print(self.procs.log_tail(40))
        self.stop_all()
        self.stop_redis()

    # --- the platform's records ------------------------------------------------------------
    def submit(self, *batches: tuple[str, int, dict[str, Any]]) -> list[str]:
        """Submit (user, count, params) batches in one go; the job ids, as SQLite stores them."""
        out = self.run("-m", "tests.drills.driver", "submit", json.dumps(batches))
        return [i.replace("-", "") for i in json.loads(out)]

    def query(self, sql: str, *args: Any) -> list[tuple]:
        with sqlite3.connect(self.db_path, timeout=10) as db:
            return db.execute(sql, args).fetchall()

    def log(self, name: str) -> str:
        return (self.procs.logs_dir / f"{name}.log").read_text(errors="replace")

    def job(self, job_id: str) -> dict[str, Any]:
        status, attempt, worker, lost, error = self.query(
            "SELECT status, attempt, worker_id, workers_lost, error FROM generation_job "
            "WHERE id = ?",
            job_id,
        )[0]
        return {
            "status": status,
            "attempt": attempt,
            "worker_id": worker,
            "lost": lost,
            "error": error,
        }

    def images(self, job_id: str) -> int:
        return self.query("SELECT count(*) FROM generation_jobimage WHERE job_id = ?", job_id)[0][0]

    def settlements(self, job_id: str) -> list[str]:
        rows = self.query(
            "SELECT kind FROM accounts_creditentry WHERE job_id = ? AND kind IN "
            "('capture', 'release')",
            job_id,
        )
        return [kind for (kind,) in rows]

    def check_ledger(self) -> str:
        return self.run("manage.py", "check_ledger")

    def wait(self, condition: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "platform" in self.procs.processes:
                self.procs.check_alive()
            try:
                if result := condition():
                    return result
            except (redis.RedisError, sqlite3.OperationalError):
                pass
            time.sleep(0.05)
        raise AssertionError(f"{what}: not in {timeout}s\n{self.procs.log_tail(30)}")

    def wait_running(
        self, job_id: str, timeout: float = 60, not_on: Collection[str] = frozenset()
    ) -> str:
        """The worker running the job (one not in `not_on`: killed ones still show until they
        are declared dead)."""

        def running() -> str | None:
            row = self.job(job_id)
            ok = row["status"] == "running" and row["worker_id"] not in not_on
            return row["worker_id"] if ok else None

        return self.wait(running, timeout, f"job {job_id} running")

    def wait_finished(self, job_ids: list[str], timeout: float = 90) -> None:
        self.wait(
            lambda: all(
                self.job(j)["status"] in ("succeeded", "failed", "cancelled") for j in job_ids
            ),
            timeout,
            f"jobs {job_ids} finished",
        )


@pytest.fixture(scope="module")
def drill_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrillWorld]:
    world = DrillWorld(tmp_path_factory.mktemp("drill"))
    world.run("manage.py", "migrate", "--no-input", "-v", "0")
    world.run("-m", "gpu_worker", "make-demo-model", "--models-dir", str(world.models))
    world.run("-m", "tests.drills.driver", "setup", *USERS)
    world.start_redis()
    world.start_platform()
    try:
        yield world
    finally:
        world.shut_down()


@pytest.fixture
def world(drill_world: DrillWorld) -> Iterator[DrillWorld]:
    """The shared platform and Redis; the drill's GPU workers are stopped after it."""
    yield drill_world
    for name in [n for n in drill_world.procs.processes if n.startswith("gpu-")]:
        proc = drill_world.procs.processes.pop(name)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if drill_world.redis_server is None:
        drill_world.start_redis()
    assert "Ledger OK" in drill_world.check_ledger()
