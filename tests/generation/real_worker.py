"""The real GPU worker for platform tests: a pytest plugin (tests/conftest.py `pytest_plugins`),
so every module that runs jobs on the diffusers engine uses the same demo models, the same
worker wiring and the same marks.

`running_gpu_worker` builds the worker as `python -m gpu_worker` runs it, in-process, on its
own broker object over the test's Redis (it shares no code with the platform beyond
gpu_worker.protocol); its heartbeat makes the platform's scheduler hand it jobs on its own queue.
The fixtures: `demo_models` (a folder of tiny random-weight models, one per module),
`gpu_worker_process` (a worker on them, one per module), `demo_catalogue` (the catalogue synced
from them) and `thread_connections_closed`.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: the CPU thread cliff

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.generation.a1111_support import thread_connections_closed

__all__ = [
    "REAL_WORKER_MARKS",
    "demo_catalogue",
    "demo_models",
    "gpu_worker_process",
    "running_gpu_worker",
    "thread_connections_closed",
]

REAL_WORKER_MARKS = [
    pytest.mark.engine,
    pytest.mark.django_db(transaction=True),
    # a real GPU worker on the demo models and a platform worker, for every test of the module
    pytest.mark.usefixtures(
        "demo_catalogue", "platform_tick", "gpu_worker_process", "thread_connections_closed"
    ),
    # diffusers 0.42's schedulers trip numpy 2's copy-keyword deprecation on every construction
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]


@contextmanager
def running_gpu_worker(
    models_dir: Path,
    work_dir: Path,
    *,
    name: str,
    events: bool = False,
    downloads: bool = False,
    heartbeat_interval: float = 0.3,
    **service_options: Any,
) -> Iterator[Any]:
    """A started GPU worker (`gpu_worker.service.WorkerService`) on `models_dir`, its caches
    under `work_dir`. `events`: publish progress to the websocket channels; `downloads`: fetch
    members' and virtual models into a download cache. Its heartbeat carries operator commands
    (drain, evict) to it."""
    import redis

    from gpu_worker.engine import Engine
    from gpu_worker.heartbeat import Heartbeat
    from gpu_worker.model_cache import ModelCache
    from gpu_worker.model_downloads import DownloadCache
    from gpu_worker.progress import ChannelPublisher
    from gpu_worker.service import WorkerLifecycle, WorkerService, register_actors, running_worker
    from gpu_worker.wakeup import WakeupRedisBroker

    url = os.environ["REDIS_URL"]
    broker = WakeupRedisBroker(url=url)
    engine = Engine(
        models_dir=models_dir,
        cache=ModelCache(device="cpu", device_budget_bytes=1 << 30, ram_budget_bytes=2 << 30),
        cache_dir=work_dir / "cache",
    )
    publisher = ChannelPublisher(url) if events else None
    service = WorkerService(
        engine=engine,
        broker=broker,
        redis_client=redis.Redis.from_url(url),
        publisher=publisher,
        worker_id=f"{name}-{uuid.uuid4().hex[:6]}",
        downloads=DownloadCache(work_dir / "downloads", budget_bytes=1 << 30)
        if downloads
        else None,
        **service_options,
    )
    register_actors(broker, service)
    heartbeat = Heartbeat(
        redis.Redis.from_url(url),
        service.heartbeat_snapshot,
        on_command=service.apply_command,
        on_tick=service.flush_events,
        interval=heartbeat_interval,
    )
    broker.add_middleware(WorkerLifecycle(service, preload=[], heartbeat=heartbeat))
    try:
        with running_worker(broker, service.queue):
            yield service
    finally:
        if publisher is not None:
            publisher.close()
        broker.close()


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from gpu_worker.demo_model import make_demo_models

    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("models")
    make_demo_models(folder)
    return folder


@pytest.fixture(scope="module")
def gpu_worker_process(
    demo_models: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    """One worker on the demo models for the module, publishing progress as it goes."""
    with running_gpu_worker(
        demo_models,
        tmp_path_factory.mktemp("worker"),
        name="e2e",
        events=True,
        progress_interval=0.0,
        heartbeat_interval=0.5,
    ) as service:
        yield service


@pytest.fixture
def demo_catalogue(db: None, demo_models: Path) -> None:
    from generation.catalogue_sync import sync_catalogue

    sync_catalogue(models_dir=demo_models, include_workers=False)
