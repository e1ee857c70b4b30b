"""Images for inpainting tests: a source in which any change shows, and rectangle masks."""

from __future__ import annotations

import base64
import io

from PIL import Image, ImageDraw


def png_b64(image: Image.Image) -> str:
    out = io.BytesIO()
    image.save(out, "PNG")
    return base64.b64encode(out.getvalue()).decode()


def pattern(size: tuple[int, int]) -> Image.Image:
    """A source whose every pixel differs from its neighbours, so any change shows."""
    image = Image.new("RGB", size)
    image.putdata(
        [
            ((x * 7) % 256, (y * 11) % 256, (x * y) % 256)
            for y in range(size[1])
            for x in range(size[0])
        ]
    )
    return image


def mask_of(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    """White (repaint) inside `box` (left, top, right, bottom; exclusive), black elsewhere."""
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=255)
    return mask
