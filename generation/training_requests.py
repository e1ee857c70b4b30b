"""The `train` block of a training job, validated (called by generation.submission for jobs of
mode "train"), and the tier's "trainings at once" rule.

Errors are TrainingRequestError (field, message, status), which submission answers exactly as
its own errors.
"""

from __future__ import annotations

from typing import Any

from accounts.tiers import tier_of
from generation.limits import limits_for
from generation.models import CatalogEntry, Job, TrainingDataset
from generation.own_models import OwnModelError, check_name
from generation.training_datasets import caption_with_trigger
from gpu_worker.params import (
    LR_SCHEDULERS,
    TRAIN_DEFAULTS,
    TRAIN_FIELDS,
    TRAIN_METHODS,
    TrainImage,
    TrainParams,
)

TRAINABLE_FAMILIES = ("sd1", "sdxl")
LIMITS: dict[str, tuple[float, float]] = {
    "rank": (1, 128),
    "alpha": (0.01, 1024),
    "learning_rate": (1e-7, 1.0),
    "lr_warmup_steps": (0, 100_000),
    "epochs": (1, 100),
    "repeats": (1, 100),
    "batch_size": (1, 16),
    "resolution": (32, 2048),
    "num_vectors": (1, 75),  # A1111's slider; one 75-token chunk holds at most that many
    "prior_loss_weight": (0, 100),
    "class_count": (0, 1000),  # and the tier's images per job
}


class TrainingRequestError(Exception):
    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.message, self.status = field, message, status


def _number(raw: dict[str, Any], name: str, *, integer: bool) -> Any:
    field = f"train.{name}"
    value = raw.get(name, TRAIN_DEFAULTS.get(name))
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TrainingRequestError(field, f"{field} must be {kind}", 400)
    try:
        number = float(value)
        if integer and number != int(number):
            raise ValueError
    except (TypeError, ValueError):
        raise TrainingRequestError(field, f"{field} must be {kind}", 400) from None
    low, high = LIMITS[name]
    if not low <= number <= high:  # also refuses NaN
        raise TrainingRequestError(field, f"{field} must be between {low:g} and {high:g}")
    return int(number) if integer else number


def _flag(raw: dict[str, Any], name: str) -> bool:
    value = raw.get(name, TRAIN_DEFAULTS[name])
    if isinstance(value, bool):
        return value
    if value in ("true", "on", "1", 1):
        return True
    if value in ("false", "off", "0", 0, "", None):
        return False
    raise TrainingRequestError(f"train.{name}", f"train.{name} must be true or false", 400)


def validate_training(user: Any, raw: Any, checkpoint: CatalogEntry) -> TrainParams:
    """The job's TrainParams: limits checked, the dataset's images and captions frozen."""
    if tier_of(user).max_trainings < 1:
        raise TrainingRequestError("train", "your membership does not include training", 403)
    if not isinstance(raw, dict):
        raise TrainingRequestError("train", "train must be an object", 400)
    unknown = sorted(set(raw) - TRAIN_FIELDS)
    if unknown:
        raise TrainingRequestError(
            f"train.{unknown[0]}",
            f"unknown field train.{unknown[0]}; the fields are {', '.join(sorted(TRAIN_FIELDS))}",
            400,
        )
    if checkpoint.family not in TRAINABLE_FAMILIES:
        raise TrainingRequestError(
            "checkpoint", f"training needs an SD 1.x or SDXL checkpoint ({checkpoint.label})"
        )
    dataset = _dataset(user, raw.get("dataset_id"))
    rows = list(dataset.images.all())
    if not rows:
        raise TrainingRequestError("train.dataset_id", "the dataset has no images")
    scheduler = raw.get("lr_scheduler", TRAIN_DEFAULTS["lr_scheduler"])
    if scheduler not in LR_SCHEDULERS:
        raise TrainingRequestError(
            "train.lr_scheduler", f"train.lr_scheduler must be one of {', '.join(LR_SCHEDULERS)}"
        )
    method = raw.get("method", TRAIN_DEFAULTS["method"])
    if method not in TRAIN_METHODS:
        raise TrainingRequestError(
            "train.method", f"train.method must be one of {', '.join(TRAIN_METHODS)}"
        )
    embedding = method == "textual_inversion"
    kind = CatalogEntry.Kind.EMBEDDING if embedding else CatalogEntry.Kind.LORA
    try:
        output_name = check_name(user, kind, raw.get("output_name") or "")
    except OwnModelError as exc:
        raise TrainingRequestError(
            f"train.{exc.field}".replace("train.name", "train.output_name"),
            exc.message,
            422 if exc.status == 400 else exc.status,
        ) from None
    # An embedding is triggered by its own name (A1111's [name] in the prompt template).
    trigger = output_name if embedding else str(raw.get("trigger_word", dataset.trigger_word))
    trigger = (trigger or "").strip()[:100]
    prior = _prior_preservation(user, raw, embedding)
    resolution = _number(raw, "resolution", integer=True)
    if resolution % 8:
        raise TrainingRequestError("train.resolution", "train.resolution must be a multiple of 8")
    return TrainParams(
        dataset_id=dataset.pk,
        output_name=output_name,
        trigger_word=trigger,
        rank=_number(raw, "rank", integer=True),
        alpha=_number(raw, "alpha", integer=False),
        learning_rate=_number(raw, "learning_rate", integer=False),
        lr_scheduler=scheduler,
        lr_warmup_steps=_number(raw, "lr_warmup_steps", integer=True),
        epochs=_number(raw, "epochs", integer=True),
        repeats=_number(raw, "repeats", integer=True),
        batch_size=_number(raw, "batch_size", integer=True),
        resolution=resolution,
        train_text_encoder=False if embedding else _flag(raw, "train_text_encoder"),
        images=[
            TrainImage(
                sha256=row.sha256,
                caption=caption_with_trigger(row.caption, trigger),
                width=row.width,
                height=row.height,
            )
            for row in rows
        ],
        method=method,
        num_vectors=_number(raw, "num_vectors", integer=True),
        init_text=str(raw.get("init_text", TRAIN_DEFAULTS["init_text"]) or "")[:200],
        **prior,  # type: ignore[typeddict-item]
    )


def _prior_preservation(user: Any, raw: dict[str, Any], embedding: bool) -> dict[str, Any]:
    """DreamBooth's class images (a second dataset of the member's), frozen like the
    instance images; captioned with class_prompt where they have no caption of their own."""
    class_prompt = str(raw.get("class_prompt") or "").strip()[:500]
    off = {"class_dataset_id": None, "class_prompt": class_prompt, "prior_loss_weight": 0.0}
    count = _number(raw, "class_count", integer=True)
    given = raw.get("class_dataset_id") not in (None, "")
    if not given and not count:
        return {**off, "class_count": 0, "class_images": []}
    if embedding:
        raise TrainingRequestError(
            "train.class_dataset_id" if given else "train.class_count",
            "prior preservation is for LoRA training, not embeddings",
        )
    if count:
        return _generated_classes(user, raw, class_prompt, count, given)
    dataset = _dataset(user, raw.get("class_dataset_id"), "train.class_dataset_id")
    rows = list(dataset.images.all())
    if not rows:
        raise TrainingRequestError("train.class_dataset_id", "the class dataset has no images")
    if not class_prompt and any(not row.caption.strip() for row in rows):
        raise TrainingRequestError(
            "train.class_prompt",
            "train.class_prompt is needed: some class images have no caption",
        )
    return {
        "class_dataset_id": dataset.pk,
        "class_prompt": class_prompt,
        "prior_loss_weight": _number(raw, "prior_loss_weight", integer=False),
        "class_count": 0,
        "class_images": [
            TrainImage(
                sha256=row.sha256,
                caption=row.caption.strip() or class_prompt,
                width=row.width,
                height=row.height,
            )
            for row in rows
        ],
    }


def _generated_classes(
    user: Any, raw: dict[str, Any], class_prompt: str, count: int, given: bool
) -> dict[str, Any]:
    """Class images the platform generates (generation.training_chain): checked here, frozen
    when they exist."""
    if given:
        raise TrainingRequestError(
            "train.class_count", "give train.class_dataset_id or train.class_count, not both"
        )
    if not class_prompt:
        raise TrainingRequestError(
            "train.class_prompt", "train.class_prompt is needed to generate class images"
        )
    most = limits_for(user).max_images
    if count > most:
        raise TrainingRequestError(
            "train.class_count", f"train.class_count must be at most {most} (images per job)"
        )
    return {
        "class_dataset_id": None,
        "class_prompt": class_prompt,
        "prior_loss_weight": _number(raw, "prior_loss_weight", integer=False),
        "class_count": count,
        "class_images": [],
    }


def _dataset(user: Any, value: Any, field: str = "train.dataset_id") -> TrainingDataset:
    try:
        pk = int(value)
    except (TypeError, ValueError):
        raise TrainingRequestError(field, f"{field} must be an id", 400) from None
    dataset = TrainingDataset.objects.owned_by(user).filter(pk=pk).first()
    if dataset is None:  # another member's is answered like one that does not exist
        raise TrainingRequestError(field, "no such dataset", 404)
    return dataset


def check_training_slots(user: Any) -> None:
    """The tier's trainings at once (call under the submission's per-user lock)."""
    limit = tier_of(user).max_trainings
    running = Job.objects.owned_by(user).unfinished().filter(mode=Job.Mode.TRAIN).count()
    if running >= limit:
        raise TrainingRequestError(
            "train",
            f"you have {running} unfinished trainings; your membership allows {limit} at once",
            429,
        )
