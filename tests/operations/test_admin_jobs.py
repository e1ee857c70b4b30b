from __future__ import annotations

import pytest
from django.contrib.auth.models import Permission
from django.urls import reverse

from accounts.ledger import account_for
from generation.models import Job
from generation.submission import submit_job

pytestmark = pytest.mark.django_db


@pytest.fixture
def demo_checkpoint(db):
    from generation.models import CatalogEntry

    return CatalogEntry.objects.create(name="model-a", kind="checkpoint", available=True)


def test_staff_cancel_alices_queued_job_from_the_admin_and_her_hold_is_released(
    client, alice, carol, demo_checkpoint, redis_client
):
    balance_before = account_for(alice).balance
    job = submit_job(alice, {"prompt": "a cat", "checkpoint": "model-a"})
    assert account_for(alice).balance < balance_before
    carol.user_permissions.add(*Permission.objects.filter(codename__in=["view_job", "change_job"]))
    client.force_login(carol)
    response = client.post(
        reverse("admin:generation_job_changelist"),
        {"action": "cancel_jobs", "_selected_action": [str(job.pk)]},
    )
    assert response.status_code == 302
    job.refresh_from_db()
    assert job.status == Job.Status.CANCELLED
    assert account_for(alice).balance == balance_before


def test_a_member_cannot_reach_the_jobs_admin(client, alice):
    client.force_login(alice)
    response = client.get(reverse("admin:generation_job_changelist"))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]


# --- re-dispatch, detail and filters ----------------------------------------------------------


@pytest.fixture
def jobs_admin(client, carol):
    carol.user_permissions.add(*Permission.objects.filter(codename__in=["view_job", "change_job"]))
    client.force_login(carol)
    return client


def redispatch(client, *jobs):
    return client.post(
        reverse("admin:generation_job_changelist"),
        {"action": "redispatch_jobs", "_selected_action": [str(j.pk) for j in jobs]},
        follow=True,
    ).content.decode()


def test_carol_takes_a_stuck_job_back_from_its_worker_for_the_scheduler(
    jobs_admin, alice, demo_checkpoint, redis_client
):
    job = submit_job(alice, {"prompt": "a cat", "checkpoint": "model-a"})
    assert job.mark_assigned("gpu-silent")  # handed out, but that worker never starts it
    html = redispatch(jobs_admin, job)
    job.refresh_from_db()
    assert f"Job {job.pk}: back in the queue for the next free worker that has its model." in html
    assert (job.status, job.worker_id, job.attempt) == (Job.Status.QUEUED, "", 2)


def test_redispatch_refuses_a_running_job_whose_worker_is_gone(
    jobs_admin, alice, demo_checkpoint, redis_client
):
    job = submit_job(alice, {"prompt": "a cat", "checkpoint": "model-a"})
    job.mark_assigned("gpu-vanished")
    job.mark_running("gpu-vanished", job.attempt)
    html = redispatch(jobs_admin, job)
    assert "its worker gpu-vanished is gone: the sweeper puts it back in the queue" in html
    job.refresh_from_db()
    assert (job.status, job.attempt) == (Job.Status.RUNNING, 1)


def test_redispatch_leaves_a_job_on_a_live_worker_and_a_finished_one_alone(
    jobs_admin, alice, demo_checkpoint, redis_client
):
    from gpu_worker.protocol import HEARTBEAT_KEY

    running = submit_job(alice, {"prompt": "a cat", "checkpoint": "model-a"})
    running.mark_assigned("gpu-1")
    running.mark_running("gpu-1", running.attempt)
    redis_client.set(HEARTBEAT_KEY.format(worker_id="gpu-1"), "{}", ex=15)
    done = submit_job(alice, {"prompt": "a dog", "checkpoint": "model-a"})
    done.mark_succeeded(done.attempt)
    html = redispatch(jobs_admin, running, done)
    assert "running on gpu-1, which is alive: it is not stuck." in html
    assert "already finished (Succeeded)." in html
    running.refresh_from_db()
    done.refresh_from_db()
    assert (running.status, running.attempt) == (Job.Status.RUNNING, 1)
    assert done.status == Job.Status.SUCCEEDED


def test_the_job_page_shows_parameters_timings_per_hop_the_error_and_images(
    jobs_admin, alice, demo_checkpoint
):
    from datetime import timedelta

    from tests.gallery.factories import make_image

    image = make_image(alice, checkpoint=demo_checkpoint)
    job = image.job
    started = job.created_at + timedelta(seconds=4)
    Job.objects.filter(pk=job.pk).update(
        dispatched_at=job.created_at + timedelta(seconds=1),
        started_at=started,
        finished_at=started + timedelta(seconds=6),
        error="nothing really",
        timings={"queued_s": 2.5, "model_load_s": 3.25, "model_loaded": True, "sampling_s": 2},
    )
    html = jobs_admin.get(reverse("admin:generation_job_change", args=[job.pk])).content.decode()
    assert "&quot;prompt&quot;" in html  # the parameters, as JSON
    assert "submitted -&gt; dispatched</th><td>1.00 s" in html
    assert "submitted -&gt; started (wait)</th><td>4.00 s" in html
    assert "getting the model</th><td>3.25 s (loaded)" in html
    assert "started -&gt; finished (run)</th><td>6.00 s" in html
    assert "nothing really" in html
    assert reverse("generation-image-thumb", args=[image.pk]) in html


def test_the_jobs_list_filters_by_worker_model_and_owner(jobs_admin, alice, bob, demo_checkpoint):
    from generation.models import CatalogEntry

    other = CatalogEntry.objects.create(name="model-b", kind="checkpoint")
    a = Job.objects.create(owner=alice, checkpoint=demo_checkpoint, params={}, worker_id="gpu-1")
    b = Job.objects.create(owner=bob, checkpoint=other, params={}, worker_id="gpu-2")

    def listed(**query):
        response = jobs_admin.get(reverse("admin:generation_job_changelist"), query)
        assert response.status_code == 200
        return {j.pk for j in response.context["cl"].result_list}

    assert listed(worker="gpu-2") == {b.pk}
    assert listed(checkpoint__id__exact=demo_checkpoint.pk) == {a.pk}
    assert listed(owner__id__exact=bob.pk) == {b.pk}
    assert listed(status="queued") == {a.pk, b.pk}
