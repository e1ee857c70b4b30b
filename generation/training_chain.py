"""Starting a training, with the txt2img job that makes its class images when it asks for
them (DreamBooth's prior preservation, `train.class_count`).

Both are submitted in one transaction, each an ordinary job with its own hold: the class job is
the member's like any txt2img job (listed, billed, cancellable), and the training waits for it
(Job.after) outside the scheduler's reach. When the class job ends, generation.lifecycle lets
the training go (its class images frozen) or calls it off, releasing its whole hold; cancelling
the waiting training cancels the class job too. Neither is ever charged for the other.
"""

from __future__ import annotations

from typing import Any

from django.db import transaction

from generation.models import Job
from generation.submission import SubmissionError, submit_job
from gpu_worker.training_rules import class_image_side

# The sample's fields the class images share (the same sampler and steps the member chose).
SHARED_FIELDS = ("checkpoint", "negative_prompt", "steps", "cfg_scale", "sampler", "seed")


def class_job_params(params: dict[str, Any]) -> dict[str, Any] | None:
    """The txt2img request making a training's class images, or None when it needs none."""
    train = params.get("train")
    if not isinstance(train, dict):
        return None
    try:
        count = int(train.get("class_count") or 0)
        side = class_image_side(int(train.get("resolution") or 512))
    except (TypeError, ValueError):
        return None  # the training's own validation names the field
    if count < 1 or train.get("class_dataset_id") not in (None, ""):
        return None
    request = {k: params[k] for k in SHARED_FIELDS if k in params}
    request.update(
        mode="txt2img",
        prompt=str(train.get("class_prompt") or ""),
        width=side,
        height=side,
        batch_size=count,
    )
    return request


def submit_training(user: Any, params: dict[str, Any]) -> Job:
    """Submit a training job (and its class-image job first when it asks for one)."""
    request = class_job_params(params)
    if request is None:
        return submit_job(user, params)
    with transaction.atomic():  # both or neither; dispatch waits for the commit
        training = submit_job(user, params)  # validated first: its errors name train.* fields
        try:
            class_job = submit_job(user, request)
        except SubmissionError as exc:
            raise SubmissionError(
                "train.class_count",
                f"the class images cannot be generated: {exc.message}",
                exc.status,
            ) from None
        training.after = class_job
        training.params["train"]["class_job_id"] = str(class_job.pk)
        training.save(update_fields=["after", "params"])
    return training
