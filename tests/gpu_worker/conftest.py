"""Fixtures for the GPU worker tests: the demo models (made once), an engine, Redis, a worker.

Redis comes from REDIS_URL (set by `python -m operations.with_redis`); the broker uses its own
namespace and nothing here flushes the database.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see stack notes, thread cliff
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from gpu_worker.protocol import HEARTBEAT_INDEX, GenerationRequest


def pytest_configure(config: pytest.Config) -> None:
    # diffusers 0.42's schedulers trip numpy 2's copy-keyword deprecation on every construction
    config.addinivalue_line(
        "filterwarnings", "ignore:__array__ implementation doesn't accept a copy keyword"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if not isinstance(item, pytest.Function):
            continue
        if "tests/gpu_worker" in str(item.fspath) and "torch" in item.fixturenames:
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def torch() -> Any:
    import torch

    torch.set_num_threads(1)
    return torch


@pytest.fixture(scope="session")
def atelier_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("atelier-cache")


@pytest.fixture(scope="session")
def demo_models_dir(tmp_path_factory: pytest.TempPathFactory, torch: Any) -> Path:
    from gpu_worker.demo_model import make_demo_models

    models = tmp_path_factory.mktemp("models")
    make_demo_models(models)
    return models


def make_engine(models_dir: Path, cache_dir: Path, **budgets: int) -> Any:
    from gpu_worker.engine import Engine
    from gpu_worker.model_cache import ModelCache

    cache = ModelCache(
        device="cpu",
        device_budget_bytes=budgets.get("device", 1 << 30),
        ram_budget_bytes=budgets.get("ram", 2 << 30),
    )
    return Engine(models_dir=models_dir, cache=cache, cache_dir=cache_dir)


@pytest.fixture(scope="session")
def engine(demo_models_dir: Path, atelier_cache_dir: Path) -> Any:
    """One engine for the session: its cache keeps the demo pipelines loaded."""
    return make_engine(demo_models_dir, atelier_cache_dir)


def demo_request(**overrides: Any) -> GenerationRequest:
    request: dict[str, Any] = {
        "job_id": "job-" + uuid.uuid4().hex[:12],
        "attempt": 1,
        "events_group": "user.test-" + uuid.uuid4().hex[:8],
        "mode": "txt2img",
        "checkpoint": "atelier-demo-v1",
        "vae": None,
        "prompt": "a photo of a (cat:1.2)",
        "negative_prompt": "blurry",
        "sampler": "Euler a",
        "scheduler": "Automatic",
        "steps": 3,
        "cfg_scale": 7.0,
        "width": 64,
        "height": 64,
        "seed": 1234,
        "batch_size": 1,
        "n_iter": 1,
        "clip_skip": 1,
        "denoising_strength": 0.75,
        "resize_mode": 0,
        "hires": None,
        "loras": [],
        "subseed": 0,
        "subseed_strength": 0.0,
        "seed_resize_from_w": 0,
        "seed_resize_from_h": 0,
        "tiling": False,
        "inpaint": None,
        "controlnet": [],
    }
    request.update(overrides)
    return cast(GenerationRequest, request)  # the overrides are the test's own, unchecked


@pytest.fixture
def request_factory() -> Any:
    return demo_request


@pytest.fixture(scope="session")
def gw_redis_url() -> str:
    return os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")


@pytest.fixture(scope="session")
def gw_redis(gw_redis_url: str) -> Any:
    import redis

    client = redis.Redis.from_url(gw_redis_url)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.skip(f"no Redis at {gw_redis_url} (run under `python -m operations.with_redis`)")
    return client


class EventLog:
    """JobEvents received by a stand-in platform actor, waitable by job id."""

    def __init__(self) -> None:
        self.events: dict[str, list[dict]] = defaultdict(list)
        self.cond = threading.Condition()

    def record(self, event: dict) -> None:
        with self.cond:
            self.events[event["job_id"]].append(event)
            self.cond.notify_all()

    def wait_terminal(self, job_id: str, timeout: float = 60.0) -> dict:
        terminal = {"succeeded", "failed", "cancelled"}
        with self.cond:
            ok = self.cond.wait_for(
                lambda: any(e["kind"] in terminal for e in self.events[job_id]), timeout
            )
            assert ok, f"no terminal event for {job_id}: {self.events[job_id]}"
            return next(e for e in self.events[job_id] if e["kind"] in terminal)


class WorkerWorld:
    def __init__(self, broker: Any, service: Any, events: EventLog, worker: Any) -> None:
        self.broker, self.service, self.events = broker, service, events
        self.worker = worker

    def submit(self, request: GenerationRequest) -> None:
        import dramatiq

        from gpu_worker.protocol import GENERATE_ACTOR, GENERATE_KWARG, worker_queue

        # exactly what the platform's dispatcher sends: a message by actor name on this
        # worker's own queue, no import of our code
        self.broker.enqueue(
            dramatiq.Message(
                queue_name=worker_queue(self.service.worker_id),
                actor_name=GENERATE_ACTOR,
                args=(),
                kwargs={GENERATE_KWARG: request},
                options={},
            )
        )


@pytest.fixture(scope="session")
def worker_world(
    gw_redis_url: str, gw_redis: Any, demo_models_dir: Path, atelier_cache_dir: Path
) -> Iterator[WorkerWorld]:
    """The product's broker (own namespace), the GPU worker in-process, a platform stand-in."""
    import dramatiq

    from gpu_worker.progress import ChannelPublisher
    from gpu_worker.protocol import JOB_EVENT_ACTOR, PLATFORM_QUEUE
    from gpu_worker.service import (
        WorkerLifecycle,
        WorkerService,
        register_actors,
        running_worker,
    )
    from gpu_worker.wakeup import WakeupRedisBroker

    broker = WakeupRedisBroker(url=gw_redis_url, namespace="atelier-test-" + uuid.uuid4().hex[:8])
    events = EventLog()
    dramatiq.Actor(
        events.record,
        broker=broker,
        actor_name=JOB_EVENT_ACTOR,
        queue_name=PLATFORM_QUEUE,
        priority=0,
        options={"max_retries": 0},
    )
    publisher = ChannelPublisher(gw_redis_url)
    service = WorkerService(
        engine=make_engine(demo_models_dir, atelier_cache_dir),
        broker=broker,
        redis_client=gw_redis,
        publisher=publisher,
        worker_id="test-worker",
        progress_interval=0.0,  # every step, so the tests see them all
    )
    register_actors(broker, service)
    broker.add_middleware(WorkerLifecycle(service, preload=[], heartbeat=None))
    platform = dramatiq.Worker(broker, queues={PLATFORM_QUEUE}, worker_threads=1, worker_timeout=50)
    platform.start()
    with running_worker(broker, service.queue) as worker:
        yield WorkerWorld(broker, service, events, worker)
    platform.stop()
    publisher.close()
    broker.flush_all()
    broker.close()
    leftovers = list(gw_redis.scan_iter(match=f"{broker.namespace}*"))
    if leftovers:
        gw_redis.delete(*leftovers)
    gw_redis.srem(HEARTBEAT_INDEX, "test-worker")


@pytest.fixture(scope="session")
def xl_engine(tmp_path_factory: pytest.TempPathFactory, atelier_cache_dir: Path, torch: Any) -> Any:
    """An engine over a models folder holding only the tiny SDXL demo (a diffusers folder)."""
    from gpu_worker.demo_model import write_demo_xl_folder

    models = tmp_path_factory.mktemp("models-xl")
    write_demo_xl_folder(models, atelier_cache_dir)
    return make_engine(models, atelier_cache_dir)
