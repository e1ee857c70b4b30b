"""ControlNet units brought back into the generator form: by Reuse (a member's own job), by a
Remix link or PNG Info's "Send to generator" (`cn-<i>-<field>` in the query string, the form's
own names), and the one place a unit's model is matched to the member's catalogue.

As with generation.prefill, values are only shown, never submitted from here: anything that
does not parse is left out (the form keeps its default) and the submission service checks the
rest. A unit's control image is never in a link (A1111's infotext does not carry it either);
only Reuse of the member's own job points at the image the job kept.
"""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Iterable, Mapping
from contextlib import suppress
from typing import Any

from django.core.files.storage import default_storage
from django.urls import reverse

from generation.control_images import control_image_path, read_control_image
from generation.models import CatalogEntry, Job
from gpu_worker.infotext import format_number
from gpu_worker.params import CONTROL_MODES

FLOAT_FIELDS = ("weight", "guidance_start", "guidance_end", "threshold_a", "threshold_b")
INT_FIELDS = ("processor_res",)
RESIZE_MODES = (0, 1, 2)
# In a link: the unit's fields, its pixel-perfect box, and the label of a model the link may
# not name (someone else's private ControlNet), shown as a note on the generator page.
LINK_FIELDS = (
    "module",
    "model",
    *FLOAT_FIELDS[:3],
    "control_mode",
    "resize_mode",
    "pixel_perfect",
    *INT_FIELDS,
    *FLOAT_FIELDS[3:],
)
UNAVAILABLE = "unavailable_model"
KEPT = "kept_from"  # a reused unit's image: "<job id>/<unit index>" of a job of hers
MAX_LINKED_UNITS = 8  # more than any tier allows; the page keeps the tier's count
RE_ENABLED = re.compile(r"^cn-(\d+)-enabled$")
RE_TITLE = re.compile(r"^(.*?)\s*\[([0-9a-fA-F]{6,64})\]$")  # "name [hash]", as infotexts write


def _float(text: Any) -> float | None:
    try:
        number = float(str(text).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _int(text: Any) -> int | None:
    number = _float(text)
    return int(number) if number is not None and number.is_integer() else None


def typed_unit(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A unit's form values from text (a link, an infotext); malformed ones are left out."""
    unit: dict[str, Any] = {}
    for name in ("module", "model", UNAVAILABLE):
        if isinstance(raw.get(name), str) and raw[name].strip():
            unit[name] = raw[name].strip()
    for name in FLOAT_FIELDS:
        if (number := _float(raw.get(name, ""))) is not None:
            unit[name] = number
    for name in INT_FIELDS:
        if (whole := _int(raw.get(name, ""))) is not None:
            unit[name] = whole
    if (resize := _int(raw.get("resize_mode", ""))) in RESIZE_MODES:
        unit["resize_mode"] = resize
    if raw.get("control_mode") in CONTROL_MODES:
        unit["control_mode"] = raw["control_mode"]
    if "pixel_perfect" in raw:
        unit["pixel_perfect"] = str(raw["pixel_perfect"]).lower() in ("on", "true", "1")
    return unit


def units_from_query(query: Mapping[str, str]) -> list[dict[str, Any]]:
    """The units a link names (`cn-<i>-enabled` marks one), in index order."""
    indices = sorted({int(m.group(1)) for key in query if (m := RE_ENABLED.match(key))})
    units = []
    for index in indices[:MAX_LINKED_UNITS]:
        prefix = f"cn-{index}-"
        raw = {key[len(prefix) :]: query[key] for key in query if key.startswith(prefix)}
        raw["pixel_perfect"] = raw.get("pixel_perfect", "")  # an unticked box is absent
        units.append(typed_unit(raw))
    return units


def unit_link_fields(units: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """`cn-<i>-<field>` for a link to the generator, in the form's order."""
    fields: dict[str, str] = {}
    for index, unit in enumerate(units):
        fields[f"cn-{index}-enabled"] = "on"
        for name in (*LINK_FIELDS, UNAVAILABLE):
            value = unit.get(name)
            if value is None or value == "" or value is False:
                continue
            text = "on" if value is True else format_number(value)
            fields[f"cn-{index}-{name}"] = text
    return fields


def match_model(models: Iterable[CatalogEntry], given: str) -> str | None:
    """The catalogue name `given` stands for among `models` (the member's usable ControlNets):
    by name, or as an infotext's "name [hash]" by name or by the file's hash."""
    entries = list(models)
    names = {entry.name for entry in entries}
    if given in names:
        return given
    match = RE_TITLE.match(given)
    if match is None:
        return None
    name, digest = match.group(1), match.group(2).lower()
    if name in names:
        return name
    for entry in entries:
        if entry.sha256 and entry.sha256.lower().startswith(digest):
            return entry.name
    return None


def reused_units(job: Job) -> list[dict[str, Any]]:
    """A member's own job's units, each naming the control image the job kept (`kept_from`,
    "<job id>/<unit index>"); none for a unit that used the img2img source or whose file is
    gone. The page shows it from generation.image_files.job_control_image (her own only)."""
    units = []
    for index, stored in enumerate(job.params.get("controlnet") or ()):
        unit = {key: value for key, value in stored.items() if key != "image_sha256"}
        sha = stored.get("image_sha256")
        if sha and default_storage.exists(control_image_path(sha)):
            unit[KEPT] = f"{job.pk}/{index}"
        units.append(unit)
    return units


def _kept_ref(kept_from: Any) -> tuple[uuid.UUID, int] | None:
    """(job id, unit index) from "<job id>/<unit index>"; None when it does not parse."""
    job_id, _slash, index = str(kept_from or "").partition("/")
    try:
        return uuid.UUID(job_id), int(index)
    except ValueError:
        return None


def _kept_sha(user: Any, kept_from: Any) -> str | None:
    """The image hash of the unit a `kept_from` names, if the job is hers; None otherwise."""
    if (ref := _kept_ref(kept_from)) is None:
        return None
    job = Job.objects.owned_by(user).filter(pk=ref[0]).first()
    units = (job.params.get("controlnet") or []) if job else []
    return units[ref[1]].get("image_sha256") if 0 <= ref[1] < len(units) else None


def kept_image_url(kept_from: Any) -> str | None:
    ref = _kept_ref(kept_from)
    return reverse("generation-job-control-image", args=ref) if ref and ref[1] >= 0 else None


def with_kept_images(user: Any, params: dict[str, Any]) -> dict[str, Any]:
    """The no-JavaScript form's request with each reused unit's kept image read back (the
    script sends the image itself). A `kept_from` naming someone else's job brings nothing."""
    units = []
    for given in params.get("controlnet") or ():
        unit = {key: value for key, value in given.items() if key != KEPT}
        sha = None if unit.get("image") else _kept_sha(user, given.get(KEPT))
        if sha:
            with suppress(OSError):  # gone: refused for want of an image, as without one
                unit["image"] = read_control_image(sha)
        units.append(unit)
    return {**params, "controlnet": units} if units else params
