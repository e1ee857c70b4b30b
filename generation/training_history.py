"""What a member sees of a training job: its epochs (loss, sample, LoRA, charge), the spend so
far and the loss curve, for the page and the REST API alike."""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.urls import reverse

from accounts.ledger import charged_so_far
from generation.models import CatalogEntry, Job, TrainingEpoch

CURVE_WIDTH, CURVE_HEIGHT, CURVE_PAD = 480, 160, 24


@dataclass(frozen=True)
class EpochView:
    epoch: int
    steps: int
    loss: float | None
    losses: list[float]
    prior_loss: float | None  # on class images (prior preservation)
    charged: Decimal
    sample_url: str | None
    lora_url: str
    lora_size_bytes: int


def epoch_views(job: Job) -> list[EpochView]:
    return [
        EpochView(
            epoch=row.epoch,
            steps=row.steps,
            loss=row.loss,
            losses=list(row.losses or []),
            prior_loss=row.prior_loss,
            charged=row.charged,
            sample_url=reverse("training-epoch-sample", args=[job.pk, row.epoch])
            if row.sample
            else None,
            lora_url=reverse("training-epoch-lora", args=[job.pk, row.epoch]),
            lora_size_bytes=row.lora_size_bytes,
        )
        for row in TrainingEpoch.objects.filter(job=job).order_by("epoch")
    ]


def spent(job: Job) -> Decimal:
    """Charged so far: the finished epochs' parts (and the settlement's charge once settled)."""
    return charged_so_far(job.pk)


def trained_kind(train: dict[str, Any]) -> str:
    """The catalogue kind a training makes: an embedding for textual inversion, else a LoRA."""
    if train.get("method") == "textual_inversion":
        return str(CatalogEntry.Kind.EMBEDDING)
    return str(CatalogEntry.Kind.LORA)


def trained_lora(job: Job) -> CatalogEntry | None:
    """The model a succeeded training made: its LoRA, or its embedding."""
    train = job.params.get("train", {})
    name = train.get("output_name")
    if not name or job.status != Job.Status.SUCCEEDED:
        return None
    kind = trained_kind(train)
    return CatalogEntry.objects.filter(owner_id=job.owner_id, kind=kind, name=name).first()


def loss_curve(epochs: list[EpochView]) -> dict[str, Any] | None:
    """An SVG polyline of every step's loss across the epochs (server-drawn, no script), with
    its axis range and the epoch boundaries."""
    values = [v for e in epochs for v in e.losses if math.isfinite(v)]
    if len(values) < 2:
        return None
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    inner_w, inner_h = CURVE_WIDTH - 2 * CURVE_PAD, CURVE_HEIGHT - 2 * CURVE_PAD

    def x(i: int) -> float:
        return CURVE_PAD + inner_w * i / (len(values) - 1)

    def y(v: float) -> float:
        return CURVE_PAD + inner_h * (1 - (v - low) / span)

    points = " ".join(f"{x(i):.1f},{y(v):.1f}" for i, v in enumerate(values))
    boundaries, done = [], 0
    for e in epochs[:-1]:
        done += len(e.losses)
        boundaries.append(round(x(done - 1), 1))
    return {
        "width": CURVE_WIDTH,
        "height": CURVE_HEIGHT,
        "pad": CURVE_PAD,
        "points": points,
        "low": f"{low:.4f}",
        "high": f"{high:.4f}",
        "steps": len(values),
        "boundaries": boundaries,
        "bottom": CURVE_HEIGHT - CURVE_PAD,
    }
