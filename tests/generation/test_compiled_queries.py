"""The dispatcher's fixed-shape reads, compiled once (`generation.scheduling.compiled`), give the
rows and instances their querysets give, with Django's conversions (JSON, datetimes), and see
every change to the data made after they were compiled."""

from __future__ import annotations

import pytest
from django.utils import timezone

from generation.models import Job, ModelRecipe
from generation.scheduling.compiled import CompiledQuery
from generation.scheduling.dispatcher import _PLANNED
from generation.scheduling.estimates import (
    HISTORY_FIELDS,
    HISTORY_ROWS,
    _history_rows,
    _recent_history,
)
from generation.scheduling.inputs import _in_flight, _waiting_window, in_flight_jobs
from generation.stored_models import _AVAILABLE, _available
from generation.submission import submit_job
from tests.generation.conftest import SMALL
from tests.generation.own_model_uploads import upload
from tests.model_file_builder import sd1_lora

pytestmark = pytest.mark.django_db

IN_FLIGHT_VALUES = ("pk", "owner_id", "status", "worker_id", "params", "mode", "created_at")


def instance_values(job: Job) -> tuple:
    checkpoint = job.checkpoint
    recipe = getattr(checkpoint, "recipe", None)
    return (
        *(getattr(job, name) for name in IN_FLIGHT_VALUES),
        job.dispatched_at,
        job.started_at,
        (checkpoint.pk, checkpoint.name, checkpoint.sha256, checkpoint.stored_file_id),
        (recipe.recipe_hash, recipe.params) if recipe is not None else None,
    )


def test_the_waiting_window_reads_as_its_queryset_after_the_queue_changed(alice, bob, catalogue):
    window = CompiledQuery(_waiting_window)
    submit_job(alice, SMALL)
    assert window.rows(10) == list(_waiting_window(10))  # compiled here
    jobs = [submit_job(bob, {**SMALL, "width": 72}), submit_job(alice, SMALL)]
    assert jobs[0].mark_assigned("gpu-1")
    rows = window.rows(10)
    assert rows == list(_waiting_window(10))
    assert [row[0] for row in rows] == [
        job.pk for job in Job.objects.waiting().order_by("created_at")
    ]
    assert isinstance(rows[0][5], dict) and rows[0][2].tzinfo is not None  # JSON, aware time
    assert window.rows(1) == list(_waiting_window(1))  # another LIMIT: compiled apart


def test_the_in_flight_jobs_read_as_their_queryset_with_checkpoint_and_recipe(
    alice, bob, catalogue
):
    assert in_flight_jobs() == []
    ModelRecipe.objects.create(
        entry=catalogue["b"], recipe_hash="ab" * 32, params={"mode": "weighted_sum"}
    )
    running = submit_job(alice, SMALL)
    assert running.mark_assigned("gpu-1") and running.mark_running("gpu-1", running.attempt)
    handed = submit_job(bob, {**SMALL, "checkpoint": "model-b"})
    assert handed.mark_assigned("gpu-1")
    submit_job(alice, SMALL)  # waiting: not in flight

    compiled = in_flight_jobs()
    expected = list(_in_flight())
    assert [instance_values(job) for job in compiled] == [instance_values(job) for job in expected]
    assert [job.pk for job in compiled] == [running.pk, handed.pk]
    assert compiled[1].checkpoint.recipe.params == {"mode": "weighted_sum"}


def test_an_id_list_is_one_parameter_whatever_its_length(
    alice, bob, carol, alice_api, catalogue, settings, tmp_path
):
    """The stored models members may name, and the jobs a plan hands out, by id lists of any
    length through one compiled query."""
    settings.MODEL_STORE_DIR = tmp_path / "model-store"
    upload(alice_api, sd1_lora(), "alice-lora")
    for owners in ([], [bob.pk], [alice.pk, bob.pk, carol.pk]):
        assert _AVAILABLE.rows(owner_ids=owners) == list(_available(owners))  # type: ignore[arg-type]
    assert any(row[0] == alice.pk for row in _AVAILABLE.rows(owner_ids=[alice.pk]))
    jobs = [submit_job(alice, SMALL), submit_job(bob, SMALL), submit_job(carol, SMALL)]
    for chosen in (jobs[:1], jobs):
        ids = [str(job.pk) for job in chosen]
        planned = {job.pk: job for job in _PLANNED.objects(ids=ids)}
        expected = Job.objects.select_related("checkpoint__recipe").in_bulk(ids)
        assert planned.keys() == expected.keys()
        for pk, job in planned.items():
            assert (job.params, job.attempt, job.checkpoint.name, job.created_at) == (
                expected[pk].params,
                expected[pk].attempt,
                expected[pk].checkpoint.name,
                expected[pk].created_at,
            )


def test_the_speed_history_reads_as_its_queryset_from_any_time(alice, catalogue):
    """A time given at each run (the history window's start, "finished since") is a parameter,
    not compiled in."""
    jobs = []
    for i in range(3):
        job = submit_job(alice, {**SMALL, "width": 64 + 8 * i})
        assert job.mark_assigned("gpu-1") and job.mark_running("gpu-1", job.attempt)
        assert job.mark_succeeded(job.attempt, "gpu-1", {"total_s": 2.0, "sampling_s": 1.5})
        jobs.append(job)
    middle = Job.objects.get(pk=jobs[1].pk).finished_at
    for since in (None, middle, timezone.now()):
        expected = _recent_history()
        if since is not None:
            expected = expected.filter(finished_at__gte=since)
        assert _history_rows(since) == list(
            expected.values(*HISTORY_FIELDS, "checkpoint_id", "pk")[:HISTORY_ROWS]
        )
    assert len(_history_rows(middle)) == 2
