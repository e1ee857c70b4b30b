"""A worker's result images, checked and measured, with their thumbnails, before they are recorded.

Recording a success waits on this, on the platform worker's CPU that every GPU worker shares, so
the PNG is not decoded: its header gives the size and Pillow's `verify()` walks every chunk and
checks its CRC, which refuses a truncated or corrupted file without inflating the pixels (about
0.5 ms at 512x512 and 1.7 ms at 1024x1024 here, against 14 and 36 ms for a decode and thumbnail).
The thumbnail is the one the GPU worker made from the image it already held
(`gpu_worker.thumbnails`), taken after a look at its header; only for a worker that sent none
(one older than the field) or one that is not a small enough WEBP does the platform decode the
PNG and make it. What `verify()` cannot see (pixel data that is wrong inside intact chunks) is
the worker's to get right: it encoded the PNG from an image it held.

bench_record_path (PostgreSQL, the platform worker's CPU per recorded success, with the worker's
thumbnail against without): 16 against 32 ms at 512x512, 40 against 84 ms at 1024x1024. A
current worker's PNG then comes as bytes in Redis (`checked_images`, `gpu_worker.result_store`),
not as base64 in the event: 17.5 against 35.8 ms at 1024x1024.

Run in a thread beside the job's read and claim, the old decode saved no time on a busy 2-core
machine and cost CPU (thread hand-offs): this runs before the transaction, holding no lock.
"""

from __future__ import annotations

import binascii
import io
import logging
from dataclasses import dataclass

import redis
from PIL import Image

from generation.broker import get_redis
from gpu_worker import result_store
from gpu_worker.protocol import ResultImage
from gpu_worker.thumbnails import THUMBNAIL_FORMAT, THUMBNAIL_SIDE, thumbnail_webp

logger = logging.getLogger(__name__)

# What Pillow raises for data that is not a whole image of the format asked for: OSError (and
# its UnidentifiedImageError) for a short or unknown file, SyntaxError for a bad chunk or
# checksum, ValueError for bad base64, DecompressionBombError for an absurd size in a header.
_BROKEN = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)


class BrokenResultImage(ValueError):
    """A result image that is not a whole PNG: the success is not recorded (the job stays
    unclaimed and the message is retried)."""


@dataclass(frozen=True)
class CheckedImage:
    """A result image checked and measured, with its thumbnail: what storing it needs."""

    result: ResultImage
    png: bytes
    thumbnail: bytes
    width: int
    height: int


def _decoded_base64(text: str) -> bytes:
    # Strict: refuses what is not base64, as b64decode(validate=True) does, without its regex
    # pass over the text first (about 6 of 16 ms for a 1024x1024 result's 3.5 MB here).
    return binascii.a2b_base64(text, strict_mode=True)


class LostResultImages(Exception):
    """The PNGs a worker left in Redis for this event are gone (a Redis that lost its data, or
    an event delivered again after they were stored): retrying cannot bring them back."""


def checked_images(job_id: str, attempt: int, results: list[ResultImage]) -> list[CheckedImage]:
    """Each of an event's result images checked; the PNGs the worker left in Redis
    (`gpu_worker.result_store`) read in one round trip first."""
    pngs: list[bytes | None] = [None] * len(results)
    if any(result.get("png_in_redis") for result in results):
        pngs = result_store.read_pngs(get_redis(), job_id, attempt, results)
        if any(png is None and r.get("png_in_redis") for png, r in zip(pngs, results, strict=True)):
            raise LostResultImages(f"job {job_id}'s result images are no longer in Redis")
    return [checked_image(result, png) for result, png in zip(results, pngs, strict=True)]


def forget_result_pngs(job_id: str, attempt: int, results: list[ResultImage]) -> None:
    """Once the images are stored: their bytes out of Redis (best effort: they expire anyway)."""
    try:
        result_store.forget_pngs(get_redis(), job_id, attempt, results)
    except (redis.RedisError, OSError):
        logger.warning("result PNGs of job %s left in Redis until they expire", job_id)


def checked_image(result: ResultImage, png: bytes | None = None) -> CheckedImage:
    """`png`: the image's bytes where they came apart from the event (else its base64)."""
    try:
        if png is None:
            png = _decoded_base64(result.get("png_b64") or "")
        with Image.open(io.BytesIO(png), formats=["PNG"]) as opened:  # reads the header only
            width, height = opened.size
            opened.verify()
    except _BROKEN as error:
        raise BrokenResultImage(f"a result image is not a whole PNG: {error}") from error
    thumbnail = _workers_thumbnail(result, width, height)
    if thumbnail is None:
        with Image.open(io.BytesIO(png), formats=["PNG"]) as decoded:
            thumbnail = thumbnail_webp(decoded)
    return CheckedImage(result, png, thumbnail, width, height)


def _workers_thumbnail(result: ResultImage, width: int, height: int) -> bytes | None:
    """The thumbnail the worker sent, if it is one: a WEBP no larger than the image, its longest
    side at most THUMBNAIL_SIDE. None when it sent none or another thing (then it is made here)."""
    encoded = result.get("thumbnail_webp_b64")
    if encoded is None:
        return None
    try:
        thumbnail = _decoded_base64(encoded)
        with Image.open(io.BytesIO(thumbnail), formats=[THUMBNAIL_FORMAT]) as opened:
            thumb_width, thumb_height = opened.size
    except _BROKEN as error:
        logger.warning("a worker's thumbnail is not a %s (%s): made here", THUMBNAIL_FORMAT, error)
        return None
    fits = max(thumb_width, thumb_height) <= THUMBNAIL_SIDE
    if not (fits and thumb_width <= width and thumb_height <= height):
        logger.warning(
            "a worker's %dx%d thumbnail of a %dx%d image is too large: made here",
            thumb_width,
            thumb_height,
            width,
            height,
        )
        return None
    return thumbnail
