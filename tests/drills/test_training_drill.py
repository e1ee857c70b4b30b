"""A training job's worker is killed (SIGKILL) during epoch 2: the job resumes from epoch 1's
state on the other worker, not from zero, and every epoch is charged once.

The world is the other drills' (private Redis, the platform worker, `python -m gpu_worker`
processes, one SQLite file) plus the web process (daphne), which a training worker needs: it
fetches the dataset and posts each finished epoch over HTTP with signed addresses.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Iterator

import pytest

from operations.redis_server import free_port
from tests.drills.conftest import DrillWorld

EPOCH_STEPS = 4 * 40  # four images, 40 repeats, batch 1: seconds per epoch on a CPU


@pytest.fixture(scope="module")
def training_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DrillWorld]:
    world = DrillWorld(tmp_path_factory.mktemp("training-drill"))
    port = free_port()
    world.env["MODEL_DELIVERY_BASE_URL"] = f"http://127.0.0.1:{port}"
    world.env["ALLOWED_HOSTS"] = "127.0.0.1,localhost"
    world.run("manage.py", "migrate", "--no-input", "-v", "0")
    world.run("-m", "gpu_worker", "make-demo-model", "--models-dir", str(world.models))
    world.run("-m", "tests.drills.driver", "setup", "drill-ann")
    world.start_redis()
    world.start_platform()
    argv = ["-m", "config.daphne_server", "-b", "127.0.0.1", "-p", str(port)]
    world.start("web", [*argv, "config.asgi:application"])

    def answering() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2):  # noqa: S310
                return True
        except OSError:
            return False

    world.wait(answering, 60, "the web process")
    try:
        yield world
    finally:
        world.shut_down()


def epochs_of(world: DrillWorld, job_id: str) -> list[tuple[int, int, str]]:
    return world.query(
        "SELECT epoch, steps, worker_id FROM generation_trainingepoch WHERE job_id = ? "
        "ORDER BY epoch",
        job_id,
    )


def test_a_training_worker_killed_in_epoch_two_resumes_from_epoch_one_elsewhere(
    training_world: DrillWorld,
):
    world = training_world
    first, second = world.start_gpu(), world.start_gpu()
    world.wait_ready(first, second)
    dataset = int(world.run("-m", "tests.drills.driver", "dataset", "drill-ann").strip())
    params = {
        "mode": "train",
        "checkpoint": "atelier-demo-v1",
        "prompt": "sqz, a square",
        "steps": 2,
        "width": 64,
        "height": 64,
        "seed": 3,
        "train": {
            "dataset_id": dataset,
            "output_name": "drill-squares",
            "epochs": 2,
            "repeats": EPOCH_STEPS // 4,
            "resolution": 32,
            "rank": 4,
        },
    }
    [job] = world.submit(("drill-ann", 1, params))
    victim = world.wait_running(job)
    survivor = second if victim == first else first

    world.wait(lambda: len(epochs_of(world, job)) == 1, 120, "epoch 1 recorded")

    # epoch 2 has begun: the progress the victim publishes is past epoch 1's steps
    def in_epoch_two() -> bool:
        raw = world.redis.get(f"atelier:progress:{_dashed(job)}")
        return isinstance(raw, bytes) and json.loads(raw)["step"] > EPOCH_STEPS

    world.wait(in_epoch_two, 60, "epoch 2 under way")
    world.signal(victim, signal.SIGKILL)
    killed_at = time.monotonic()

    world.wait_finished([job], timeout=180)
    row = world.job(job)
    assert row["status"] == "succeeded", row["error"]
    assert row["worker_id"] == survivor and row["lost"] == 1
    assert epochs_of(world, job) == [(1, EPOCH_STEPS, victim), (2, 2 * EPOCH_STEPS, survivor)]
    assert "resumes after epoch 1" in world.log(survivor)
    assert time.monotonic() - killed_at < 180
    parts = world.query(
        "SELECT count(*) FROM accounts_creditentry WHERE job_id = ? AND kind = 'part_capture'",
        job,
    )[0][0]
    assert parts == 2 and len(world.settlements(job)) == 1
    lora = world.query(
        "SELECT count(*) FROM generation_catalogentry WHERE kind = 'lora' AND name = ?",
        "drill-squares",
    )[0][0]
    assert lora == 1
    assert "Ledger OK" in world.check_ledger()


def _dashed(hex_id: str) -> str:
    """The job id as the worker writes it (with dashes; SQLite stores it without)."""
    return f"{hex_id[:8]}-{hex_id[8:12]}-{hex_id[12:16]}-{hex_id[16:20]}-{hex_id[20:]}"
