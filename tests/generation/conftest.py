"""Generation's small world: two checkpoints, a LoRA, a VAE, API clients for alice and bob, and
an in-process platform worker consuming the real platform queue on the test Redis."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import dramatiq
import pytest
from django.test import Client
from rest_framework.test import APIClient

from generation.broker import get_broker, reset_for_tests
from generation.models import CatalogEntry, Job
from generation.worker_events import register_platform_actors
from gpu_worker.protocol import PLATFORM_QUEUE, JobEvent
from gpu_worker.service import job_event_message

SMALL = {
    "prompt": "a lighthouse at dusk",
    "width": 64,
    "height": 64,
    "steps": 4,
    "checkpoint": "model-a",
}


# What the generator page's form posts without JavaScript (all but the checkpoint).
GENERATOR_FORM = {
    "prompt": "a red bicycle",
    "sampler": "Euler a",
    "scheduler": "Automatic",
    "steps": "6",
    "cfg_scale": "7",
    "width": "64",
    "height": "64",
    "seed": "-1",
    "batch_size": "1",
    "n_iter": "1",
    "clip_skip": "1",
}


def fund(user: Any, amount: int = 1000) -> Any:
    """Credits enough for any test job (the tier's welcome grant is not there after a
    transactional test flushed the data migration's rows)."""
    from accounts import ledger

    ledger.credit(user, amount, "grant", reason="tests", key="generation-tests")
    return user


@pytest.fixture
def alice(alice):
    return fund(alice)


@pytest.fixture
def bob(bob):
    return fund(bob)


@pytest.fixture
def carol(carol):
    return fund(carol)


@pytest.fixture
def catalogue(db) -> dict[str, CatalogEntry]:
    def entry(name: str, kind: str, **extra: Any) -> CatalogEntry:
        return CatalogEntry.objects.create(
            name=name,
            kind=kind,
            family="sd1",
            filename=f"{kind}/{name}.safetensors",
            sha256=(name.encode().hex() * 8)[:64],
            short_hash=(name.encode().hex() * 2)[:10],
            **extra,
        )

    return {
        "a": entry("model-a", "checkpoint"),
        "b": entry("model-b", "checkpoint", cost_multiplier=Decimal("2")),
        "disabled": entry("model-off", "checkpoint", enabled=False),
        "missing": entry("model-gone", "checkpoint", available=False),
        "lora": entry("style", "lora"),
        "vae": entry("clear-vae", "vae"),
        "controlnet": entry("canny-sd15", "controlnet"),
    }


def image_bytes(user: Any, url: str) -> bytes:
    """An image file as its owner's browser gets it."""
    browser = Client()
    browser.force_login(user)
    response = browser.get(url)
    assert response.status_code == 200
    return response.getvalue()


def api_client(user: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def alice_api(alice) -> APIClient:
    return api_client(alice)


@pytest.fixture
def bob_api(bob) -> APIClient:
    return api_client(bob)


@pytest.fixture
def broker(redis_client) -> Iterator[dramatiq.Broker]:
    reset_for_tests()  # a fresh broker: each test's worker adds its own middleware to it
    broker = get_broker()
    register_platform_actors(broker)  # as the platform worker command does
    broker.flush_all()
    yield broker
    reset_for_tests()


@pytest.fixture
def platform_worker(broker, transactional_db) -> Iterator[dramatiq.Worker]:
    """A real Dramatiq worker on the platform queue, as `run_platform_worker` runs it."""
    worker = dramatiq.Worker(broker, queues={PLATFORM_QUEUE}, worker_threads=2, worker_timeout=50)
    worker.start()
    yield worker
    worker.stop()


@pytest.fixture
def platform_tick(platform_worker) -> Iterator[None]:
    """The platform worker's tick, as `run_platform_worker` runs it (faster): sweep, then a
    scheduling pass, so jobs reach workers whose heartbeat appears after the submission."""
    import threading

    from django.db import connections

    from generation.scheduling.dispatcher import request_schedule
    from generation.sweeper import SweepMemory, sweep

    stop = threading.Event()
    memory = SweepMemory()

    def tick() -> None:
        while not stop.wait(0.2):
            sweep(memory=memory)
            request_schedule()
        connections.close_all()

    thread = threading.Thread(target=tick, name="platform-tick", daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


def send_event(broker: dramatiq.Broker, event: JobEvent) -> None:
    """What a GPU worker does: a message to the platform actor, by name."""
    broker.enqueue(job_event_message(event))


def wait_for(condition: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := condition():
            return result
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def status_of(job: Job) -> str:
    return Job.objects.values_list("status", flat=True).get(pk=job.pk)


def beat(
    redis_client: Any, worker_id: str, *, hot: Any = (), inventory: Any = None, **fields: Any
) -> None:
    """A live worker's heartbeat as the platform reads it (inventory None = unknown, so it is
    offered every model; a plain name is a checkpoint, a (kind, name) pair any model); `fields`
    override the rest (current_job, draining, ...)."""
    data = {
        "worker_id": worker_id,
        "loaded_models": list(hot),
        "warm_models": [],
        "hot_capacity": 1,
        "draining": False,
        "current_job": None,
        "inventory": None
        if inventory is None
        else [
            {"name": n, "kind": "checkpoint"}
            if isinstance(n, str)
            else {"kind": n[0], "name": n[1]}
            for n in inventory
        ],
        **fields,
    }
    redis_client.set(f"atelier:worker:{worker_id}", json.dumps(data), ex=8)
    redis_client.sadd("atelier:workers", worker_id)


@pytest.fixture
def preview_worker(redis_client) -> Iterator[dict[str, Any]]:
    """A GPU worker's preview side as `python -m gpu_worker` runs it: its DetectResponder
    thread on the test Redis and its heartbeat saying which preprocessors it runs (no engine:
    previews need none). Change `beat["preprocessors"]` and call `beat_now()` to re-announce."""
    from gpu_worker.preprocessors import run_preprocessor, worker_preprocessors

    # the built-in ones: the worker's engine adds the annotators (annotator_worker below)
    yield from _preview_side(redis_client, worker_preprocessors(Path(".")), run_preprocessor)


@pytest.fixture
def annotator_worker(redis_client, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A worker's preview side whose models folder holds small random HED and body-pose
    weights (the released key layouts): it lists and runs them with the engine's Annotators."""
    import torch

    from gpu_worker.annotators import Annotators
    from gpu_worker.hed import random_hed_weights
    from gpu_worker.openpose import BodyWidths, random_body_weights
    from gpu_worker.preprocessors import ANNOTATOR_WEIGHTS, worker_preprocessors

    torch.set_num_threads(1)  # the test machine's cores are shared
    models = tmp_path / "models"
    random_hed_weights(models / ANNOTATOR_WEIGHTS["softedge_hed"], ((1, 4),) * 5)
    widths = BodyWidths(vgg=(4, 4, 4, 4), cpm=4, features=4, stage1=4, stage1_wide=4, stage=4)
    random_body_weights(models / ANNOTATOR_WEIGHTS["openpose"], widths)
    annotators = Annotators(models, torch.device("cpu"))
    yield from _preview_side(redis_client, worker_preprocessors(models), annotators.control_map)


def _preview_side(
    redis_client: Any, preprocessors: list[str], control_map: Callable[..., Any]
) -> Iterator[dict[str, Any]]:
    import uuid

    from gpu_worker.detect_responder import DetectResponder
    from gpu_worker.heartbeat import Heartbeat

    worker_id = "preview-" + uuid.uuid4().hex[:6]
    state: dict[str, Any] = {"preprocessors": preprocessors}

    def snapshot() -> Any:
        return {
            "worker_id": worker_id,
            "hostname": "test",
            "device": "cpu",
            "memory_used_bytes": 0,
            "memory_budget_bytes": 1,
            "loaded_models": [],
            "current_job": None,
            "current_step": None,
            "current_steps": None,
            "recent_its": None,
            "draining": False,
            "inventory": [],
            "preprocessors": list(state["preprocessors"]),
            "sent_at": time.time(),
        }

    heartbeat = Heartbeat(redis_client, snapshot, interval=0.5)
    heartbeat.beat()
    heartbeat.start()
    responder = DetectResponder(
        redis_client,
        worker_id,
        lambda: list(state["preprocessors"]),
        control_map,
        poll_seconds=0.2,
    )
    responder.start()
    state.update(worker_id=worker_id, responder=responder, beat_now=heartbeat.beat)
    yield state
    responder.stop()
    heartbeat.stop()
