"""Images members upload with a request (img2img source, mask, ControlNet image, model preview):
decoded within the tier's byte and pixel caps, the size read from the header before any pixel is
decoded (the decompression-bomb guard)."""

from __future__ import annotations

import base64
import binascii
import io
import warnings
from typing import Any

from PIL import Image, UnidentifiedImageError

from generation.limits import GenerationLimits
from generation.request_errors import SubmissionError

ACCEPTED_INIT_FORMATS = {"PNG", "JPEG", "WEBP"}


def uploaded_image(raw: Any, limits: GenerationLimits, field: str) -> Image.Image:
    """Bytes, base64 text (data URI allowed) or an uploaded file -> a decoded image, within the
    upload byte and pixel caps (the source image and the inpaint mask alike)."""
    if hasattr(raw, "read"):
        if getattr(raw, "size", 0) and raw.size > limits.max_init_image_bytes:
            raise too_big(limits, field)
        data = raw.read(limits.max_init_image_bytes + 1)
    elif isinstance(raw, bytes):
        data = raw
    elif isinstance(raw, str):
        text = raw.split(",", 1)[1] if raw.startswith("data:") else raw
        if len(text) * 3 // 4 > limits.max_init_image_bytes + 3:
            raise too_big(limits, field)
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise SubmissionError(field, f"{field} is not valid base64", 422) from None
    else:
        raise SubmissionError(field, f"{field} must be an image file or base64 text")
    if len(data) > limits.max_init_image_bytes:
        raise too_big(limits, field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.format not in ACCEPTED_INIT_FORMATS:
                raise SubmissionError(
                    field, f"{field} must be PNG, JPEG or WEBP, not {image.format}", 422
                )
            # The header gives the size before any pixel is decoded: the bomb guard.
            if image.width * image.height > limits.max_init_image_pixels:
                raise SubmissionError(
                    field,
                    f"{field} is {image.width}x{image.height}; the limit is "
                    f"{limits.max_init_image_pixels} pixels",
                    422,
                )
            image.load()
            return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise SubmissionError(
            field,
            f"{field} has too many pixels; the limit is {limits.max_init_image_pixels} pixels",
            422,
        ) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise SubmissionError(field, f"{field} is not a readable image", 422) from None


def too_big(limits: GenerationLimits, field: str = "init_image") -> SubmissionError:
    return SubmissionError(
        field, f"{field} is larger than {limits.max_init_image_bytes} bytes", 422
    )
