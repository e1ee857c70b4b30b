"""A1111's Train tab over Atelier's training jobs: `/sdapi/v1/train/embedding` starts a
textual-inversion training (a billed, cancellable job, answered at once with its id, where
A1111 blocks until the end); `/sdapi/v1/create/embedding` is refused, since an embedding here is
made by its training (its name, vectors and init text travel with train/embedding).

A1111 reads images from a folder on the server (`data_root`); here `data_root` names one of
the member's uploaded datasets (by name), never a path.
"""

from __future__ import annotations

import math
from typing import Any

from django.utils.translation import gettext as _

from generation.a1111.errors import A1111Error
from generation.models import TrainingDataset
from generation.submission import SubmissionError, submit_job
from gpu_worker.training_rules import batches_per_epoch

# A1111 names -> ours (the train block)
FIELD_NAMES = {
    "embedding_name": "train.output_name",
    "learn_rate": "train.learning_rate",
    "batch_size": "train.batch_size",
    "training_width": "train.resolution",
    "num_vectors_per_token": "train.num_vectors",
    "init_text": "train.init_text",
}
DATASETS = "/api/v1/training/datasets/"


def refuse_create(body: Any) -> None:
    raise A1111Error(
        422,
        _(
            "an embedding is created by training it here: send name, num_vectors_per_token "
            "and init_text with POST /sdapi/v1/train/embedding (embedding_name), on a dataset "
            "uploaded to %(datasets)s"
        )
        % {"datasets": DATASETS},
        "name",
    )


def _dataset(user: Any, body: dict[str, Any]) -> TrainingDataset:
    name = str(body.get("data_root") or "").strip()
    found = TrainingDataset.objects.owned_by(user).filter(name=name).first() if name else None
    if found is None:
        raise A1111Error(
            422,
            _(
                "data_root must name one of your uploaded datasets (not a server folder); "
                "upload images and captions at %(datasets)s"
            )
            % {"datasets": DATASETS},
            "data_root",
        )
    return found


def _learning_rate(body: dict[str, Any]) -> Any:
    value = body.get("learn_rate", 0.005)  # A1111's default
    if isinstance(value, str) and ("," in value or ":" in value):
        raise A1111Error(
            422, _("learn_rate must be one number (step schedules are not supported)"), "learn_rate"
        )
    return value


def _whole(body: dict[str, Any], name: str, default: int, low: int, high: int) -> int:
    value = body.get(name, default)
    if value is None:
        value = default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = low - 1
    if isinstance(value, bool) or not low <= number <= high:
        raise A1111Error(
            422,
            _("%(name)s must be a whole number between %(low)d and %(high)d")
            % {"name": name, "low": low, "high": high},
            name,
        )
    return number


def train_embedding(user: Any, body: Any) -> dict[str, Any]:
    """Start the job; A1111's `steps` (optimizer steps) become whole epochs, as each epoch is
    metered: enough epochs of one pass over the dataset to make at least that many steps."""
    if not isinstance(body, dict):
        raise A1111Error(422, _("the request body must be a JSON object"), "body")
    dataset = _dataset(user, body)
    width = _whole(body, "training_width", 512, 32, 4096)
    height = _whole(body, "training_height", width, 32, 4096)
    resolution = int(math.sqrt(width * height)) // 8 * 8
    batch = _whole(body, "batch_size", 1, 1, 16)
    sizes = [(image.width, image.height) for image in dataset.images.all()]
    per_epoch = batches_per_epoch(sizes, resolution, 1, batch) if sizes else 1
    steps = _whole(body, "steps", 100, 1, 1_000_000)
    train = {
        "method": "textual_inversion",
        "dataset_id": dataset.pk,
        "output_name": body.get("embedding_name") or "",
        "learning_rate": _learning_rate(body),
        "batch_size": batch,
        "resolution": resolution,
        "repeats": 1,
        "epochs": max(1, math.ceil(steps / max(per_epoch, 1))),
        "num_vectors": body.get("num_vectors_per_token", 1),
        "init_text": body.get("init_text", "*"),
    }
    params: dict[str, Any] = {"mode": "train", "train": train}
    checkpoint = (body.get("override_settings") or {}).get("sd_model_checkpoint")
    if checkpoint:
        params["checkpoint"] = checkpoint
    if body.get("preview_prompt"):
        params["prompt"] = body["preview_prompt"]
    try:
        job = submit_job(user, params)
    except SubmissionError as exc:
        field = {v: k for k, v in FIELD_NAMES.items()}.get(exc.field, exc.field)
        raise A1111Error(exc.status, exc.message, field) from None
    return {
        "info": f"train embedding queued: job {job.pk}, {train['epochs']} epochs; "
        f"follow it at /api/v1/training/jobs/{job.pk}/",
        "job_id": str(job.pk),
    }
