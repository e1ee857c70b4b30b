"""DreamBooth's class images made by the platform: when the member's txt2img job that made them
ends, the training waiting for it (Job.after) goes on or is called off.

Called by generation.lifecycle on every terminal transition of a job. Success: the images
become a dataset of the member's (re-encoded like an upload) and are frozen into the training's
parameters, and the training may be scheduled. Failure or cancel: the training never started,
so it is cancelled and its whole hold released (the class job settles as any job does).
"""

from __future__ import annotations

import logging

from django.db import transaction

from generation import waiting_set
from generation.models import AWAITED, Job
from generation.training_datasets import DatasetError, create_dataset
from gpu_worker.params import TrainImage

logger = logging.getLogger(__name__)


def waiting_trainings(job: Job) -> list[Job]:
    # Read with Job.objects.with_awaited(): no training waits, so none can (a training is
    # chained to its class job as both are submitted): every other job's success skips a query.
    if getattr(job, AWAITED, None) is False:
        return []
    return list(Job.objects.filter(after=job, status=Job.Status.QUEUED))


def freeze_class_images(class_job: Job, training: Job) -> str | None:
    """Keep the class job's images as a dataset and give them to the training, which may then
    go; the reason it cannot, or None."""
    images = list(class_job.images.order_by("index"))
    if not images:
        return "the class-image job made no images"
    train = training.params["train"]
    try:
        uploads = [(f"class-{i.index + 1}.png", i.file.open("rb")) for i in images]
        try:
            dataset = create_dataset(
                training.owner, f"class images of job {str(class_job.pk)[:8]}", "", uploads
            )
        finally:
            for _name, fh in uploads:
                fh.close()
    except (DatasetError, OSError) as exc:
        return f"the class images could not be kept: {getattr(exc, 'message', exc)}"
    frozen = [
        TrainImage(
            sha256=row.sha256, caption=train["class_prompt"], width=row.width, height=row.height
        )
        for row in dataset.images.all()
    ]
    with transaction.atomic():
        row = Job.objects.select_for_update().filter(pk=training.pk, after=class_job).first()
        if row is None:  # cancelled meanwhile, or already frozen
            return None
        row.params["train"] = {**train, "class_dataset_id": dataset.pk, "class_images": frozen}
        row.after = None
        row.save(update_fields=["params", "after"])
        if row.status == Job.Status.QUEUED and not row.worker_id:  # now waiting: in its place
            waiting_set.enter_on_commit(row.pk, row.created_at)
    return None
