"""/png-info: the generation parameters of a base64 image, read by the same code that writes
them (gpu_worker.infotext) with the same size limits as the gallery's PNG Info page."""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

from django.utils.translation import gettext as _
from PIL import Image, UnidentifiedImageError

from generation.a1111.errors import A1111Error
from generation.image_limits import MAX_IMAGE_PIXELS, MAX_UPLOAD_BYTES
from gpu_worker.infotext import PNG_CHUNK, parse_infotext, read_infotext


def _decode(text: str) -> bytes:
    if text.startswith("data:"):
        text = text.split(",", 1)[-1]
    if len(text) * 3 // 4 > MAX_UPLOAD_BYTES + 3:
        raise A1111Error(
            422,
            _("image is larger than %(limit)s MB") % {"limit": MAX_UPLOAD_BYTES // 2**20},
            "image",
        )
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise A1111Error(422, _("image is not valid base64"), "image") from None


def png_info(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise A1111Error(422, _("the request body must be a JSON object"), "body")
    raw = body.get("image") or ""
    if not isinstance(raw, str):
        raise A1111Error(422, _("image must be base64 text"), "image")
    if not raw.strip():
        return {"info": "", "items": {}, "parameters": {}}
    data = _decode(raw.strip())
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise A1111Error(
                    422,
                    _("image is %(w)sx%(h)s; the limit is %(limit)s pixels")
                    % {"w": image.width, "h": image.height, "limit": MAX_IMAGE_PIXELS},
                    "image",
                )
            items = {
                key: value
                for key, value in image.info.items()
                if isinstance(value, str) and key != PNG_CHUNK
            }
        info = read_infotext(data) or ""
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise A1111Error(422, _("image has too many pixels to read safely"), "image") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise A1111Error(422, _("image is not a readable image"), "image") from None
    return {"info": info, "items": items, "parameters": parse_infotext(info) if info else {}}
