"""PNG Info: read the generation parameters of any uploaded PNG (ours, A1111's, a community
site's) with gpu_worker.infotext, the same code that writes them."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

from django.core.files.uploadedfile import UploadedFile
from django.utils.translation import gettext as _
from PIL import Image, UnidentifiedImageError

from gallery.errors import GalleryError
from gallery.remix import RemixPlan, remix_from_infotext
from generation.image_limits import MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES, PNG_SIGNATURE
from gpu_worker.infotext import parse_infotext, read_infotext

# How the page lists the parsed parameters: label and infotext key, in A1111's order.
SHOWN_KEYS = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Seed",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Denoising strength",
    "Clip skip",
    "Hires upscale",
    "Hires steps",
    "Hires upscaler",
    "Lora hashes",
    "TI hashes",
    "Version",
)


@dataclass(frozen=True)
class PngInfo:
    infotext: str
    prompt: str
    negative_prompt: str
    parameters: list[tuple[str, str]] = field(default_factory=list)
    remix: RemixPlan | None = None


def parameter_rows(parsed: dict[str, str]) -> list[tuple[str, str]]:
    """(key, value) rows for display: known keys in order, then whatever else the text held."""
    values = dict(parsed)
    if "Size-1" in values and "Size-2" in values:
        values["Size"] = f"{values.pop('Size-1')}×{values.pop('Size-2')}"
    values.pop("Prompt", None)
    values.pop("Negative prompt", None)
    rows = [(key, values.pop(key)) for key in SHOWN_KEYS if key in values]
    return rows + sorted(values.items())


def read_png_info(viewer: Any, upload: UploadedFile) -> PngInfo:
    """Parse an upload; refuses what is not a PNG, is too large, or carries no parameters."""
    if upload.size is not None and upload.size > MAX_UPLOAD_BYTES:
        raise GalleryError(
            _("This file is %(size)s MB; the limit is %(limit)s MB.")
            % {"size": round(upload.size / 2**20, 1), "limit": MAX_UPLOAD_BYTES // 2**20}
        )
    data = upload.read(MAX_UPLOAD_BYTES + 1)
    if len(data) > MAX_UPLOAD_BYTES:
        raise GalleryError(
            _("This file is larger than %(limit)s MB.") % {"limit": MAX_UPLOAD_BYTES // 2**20}
        )
    if not data.startswith(PNG_SIGNATURE):
        raise GalleryError(_("This is not a PNG file. PNG Info reads PNG images only."))
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "PNG":
                raise GalleryError(_("This is not a PNG file. PNG Info reads PNG images only."))
            width, height = image.size
        if width * height > MAX_IMAGE_PIXELS:
            raise GalleryError(
                _("This image is too large (%(w)s×%(h)s pixels).") % {"w": width, "h": height}
            )
        infotext = read_infotext(data)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise GalleryError(_("This image is too large to read safely.")) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise GalleryError(_("This PNG file is damaged and cannot be read.")) from None
    if not infotext or not infotext.strip():
        raise GalleryError(_("This PNG carries no generation parameters."))
    parsed = parse_infotext(infotext)
    return PngInfo(
        infotext=infotext,
        prompt=parsed.get("Prompt", ""),
        negative_prompt=parsed.get("Negative prompt", ""),
        parameters=parameter_rows(parsed),
        remix=remix_from_infotext(viewer, infotext),
    )
