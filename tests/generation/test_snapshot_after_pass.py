"""The queue snapshot the dispatcher stores right after a pass is made from the pass's own reads
(no second read of the queue) when the pass saw every waiting job: members then see the same
places and ETAs as a snapshot read afresh would give them; a pass that saw a full window
leaves the snapshot to a fresh read."""

from __future__ import annotations

import pytest
from django.utils import timezone

from generation.queue import queue_snapshot, snapshot_of
from generation.scheduling import dispatcher
from generation.scheduling.dispatcher import schedule_pending
from generation.scheduling.estimates import SpeedCache
from generation.submission import submit_job
from tests.conftest import make_user
from tests.generation.conftest import SMALL, beat, fund
from tests.generation.own_model_uploads import upload
from tests.model_file_builder import sd1_lora

pytestmark = pytest.mark.django_db


def sized(width: int, **params) -> dict:
    """Each its own size: no job joins another's batch."""
    return {**SMALL, "width": width, **params}


@pytest.fixture
def busy_queue(
    alice, bob, carol, alice_api, catalogue, broker, redis_client, settings, tmp_path
) -> dict:
    """Four members; a full worker running one job with another handed to it (with a stored
    LoRA its disk lacks), a finished job in the fair-share window, and five jobs waiting."""
    settings.MODEL_STORE_DIR = tmp_path / "model-store"
    upload(alice_api, sd1_lora(), "alice-lora")
    dave = fund(make_user("dave"))
    beat(redis_client, "gpu-busy", hot=["model-a"], download_bytes_per_s=1000)
    done = submit_job(bob, sized(64))
    assert done.mark_assigned("gpu-busy") and done.mark_running("gpu-busy", done.attempt)
    assert done.mark_succeeded(done.attempt, "gpu-busy", {"total_s": 3.0, "sampling_s": 2.5})
    running = submit_job(bob, sized(72))
    assert running.mark_assigned("gpu-busy") and running.mark_running("gpu-busy", running.attempt)
    unstarted = submit_job(alice, sized(80, prompt="ink <lora:alice-lora:0.5>"))
    assert unstarted.mark_assigned("gpu-busy")
    waiting = [
        submit_job(alice, sized(88, prompt="ink <lora:alice-lora:0.7>")),
        submit_job(bob, sized(96)),
        submit_job(carol, sized(104)),
        submit_job(dave, sized(112)),
        submit_job(carol, sized(120)),
    ]
    beat(redis_client, "gpu-idle", hot=["model-a"], download_bytes_per_s=1000)  # 2 free slots
    return {"waiting": waiting, "unstarted": unstarted}


def test_the_snapshot_after_a_pass_equals_a_fresh_one(
    busy_queue, monkeypatch, django_capture_on_commit_callbacks
):
    frozen = timezone.now()
    monkeypatch.setattr(timezone, "now", lambda: frozen)  # both snapshots at one moment
    speeds = SpeedCache()
    with django_capture_on_commit_callbacks(execute=True):
        report = schedule_pending(speeds=speeds)
    assert len(report.assigned) == 2 and report.queue is not None

    after_pass = snapshot_of(report.queue, speeds)
    fresh = queue_snapshot()

    assert after_pass.infos == fresh.infos
    assert after_pass.window_end == fresh.window_end
    # three handed out and unstarted, then the three still waiting, in one order
    assert sorted(info.position for info in fresh.infos.values()) == [1, 2, 3, 4, 5, 6]
    assert str(busy_queue["unstarted"].pk) in fresh.infos
    assert any(info.fetch_s > 0 for info in fresh.infos.values())  # the LoRA's download


def test_a_pass_that_saw_a_full_window_leaves_the_snapshot_to_a_fresh_read(
    busy_queue, monkeypatch, django_capture_on_commit_callbacks
):
    monkeypatch.setattr(dispatcher, "SCHEDULING_WINDOW", len(busy_queue["waiting"]))
    with django_capture_on_commit_callbacks(execute=True):
        report = schedule_pending()
    assert len(report.assigned) == 2
    assert report.queue is None
