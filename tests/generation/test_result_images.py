"""A worker's result images recorded: the thumbnail a worker sends is stored as it is, one from
an older worker (none) or a wrong one is made by the platform, and a broken PNG records nothing.
Through the real recording of a 'succeeded' event (worker_events.handle_job_event)."""

from __future__ import annotations

import base64
import io
from typing import Any, cast

import pytest
from django.core.files.storage import default_storage
from PIL import Image

from generation.models import Job, JobImage
from generation.result_images import BrokenResultImage
from generation.submission import submit_job
from generation.worker_events import handle_job_event
from gpu_worker.protocol import JobEvent
from gpu_worker.thumbnails import THUMBNAIL_SIDE, thumbnail_webp
from tests.generation.conftest import SMALL, status_of

pytestmark = pytest.mark.django_db

SIZE = (512, 384)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


RED_PNG = encoded(Image.new("RGB", SIZE, "red"))
# A worker's thumbnail of another colour than the image: one the platform made would be red.
BLUE_THUMBNAIL = thumbnail_webp(Image.new("RGB", SIZE, "blue"))


def record_success(alice: Any, png: bytes, thumbnail: bytes | None = None) -> Job:
    job = submit_job(alice, SMALL)
    assert job.mark_assigned("gpu-1")  # handed out, as the dispatcher does
    image: dict[str, Any] = {"png_b64": b64(png), "seed": 7, "infotext": "a lighthouse"}
    if thumbnail is not None:
        image["thumbnail_webp_b64"] = b64(thumbnail)
    event = {
        "job_id": str(job.pk),
        "attempt": job.attempt,
        "worker_id": "gpu-1",
        "kind": "succeeded",
        "images": [image],
    }
    assert handle_job_event(cast(JobEvent, event))
    return job


def stored_thumbnail(job: Job) -> tuple[bytes, Image.Image]:
    image = JobImage.objects.get(job=job)
    assert (image.width, image.height) == SIZE
    with default_storage.open(image.thumbnail.name or "") as fh:
        data = fh.read()
    thumbnail = Image.open(io.BytesIO(data))
    thumbnail.load()
    return data, thumbnail


def colour(thumbnail: Image.Image) -> str:
    red, _, blue = cast(tuple[int, int, int], thumbnail.convert("RGB").getpixel((5, 5)))
    return "red" if red > 200 and blue < 50 else "blue" if blue > 200 and red < 50 else "other"


def test_the_thumbnail_a_worker_sends_is_stored_as_it_is(alice, catalogue):
    job = record_success(alice, RED_PNG, BLUE_THUMBNAIL)
    data, _ = stored_thumbnail(job)
    assert status_of(job) == "succeeded" and data == BLUE_THUMBNAIL


def test_an_older_worker_that_sends_no_thumbnail_gets_one_made_by_the_platform(alice, catalogue):
    job = record_success(alice, RED_PNG)
    _, thumbnail = stored_thumbnail(job)
    assert (thumbnail.format, thumbnail.size) == ("WEBP", (THUMBNAIL_SIDE, 192))
    assert colour(thumbnail) == "red"


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(encoded(Image.new("RGB", (256, 192), "blue")), id="a-png"),
        pytest.param(encoded(Image.new("RGB", SIZE, "blue"), "WEBP"), id="512-pixels-wide"),
        pytest.param(BLUE_THUMBNAIL[: len(BLUE_THUMBNAIL) // 2], id="truncated"),
    ],
)
def test_a_thumbnail_that_is_no_small_webp_is_replaced_by_one_made_by_the_platform(
    alice, catalogue, bad
):
    job = record_success(alice, RED_PNG, bad)
    _, thumbnail = stored_thumbnail(job)
    assert (thumbnail.format, thumbnail.size) == ("WEBP", (THUMBNAIL_SIDE, 192))
    assert colour(thumbnail) == "red"


def test_a_thumbnail_larger_than_a_small_image_is_replaced(alice, catalogue):
    job = record_success(alice, encoded(Image.new("RGB", (64, 64), "red")), BLUE_THUMBNAIL)
    image = JobImage.objects.get(job=job)
    with default_storage.open(image.thumbnail.name or "") as fh, Image.open(fh) as thumbnail:
        assert (thumbnail.format, thumbnail.size, colour(thumbnail)) == ("WEBP", (64, 64), "red")


def corrupted(png: bytes) -> bytes:
    """One byte of the first IDAT chunk's data flipped: the chunk's CRC no longer matches."""
    at = png.index(b"IDAT") + 10
    return png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1 :]


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param(RED_PNG[: len(RED_PNG) // 2], id="cut-in-half"),
        pytest.param(RED_PNG[:-12], id="without-its-end"),
        pytest.param(corrupted(RED_PNG), id="a-flipped-byte"),
    ],
)
def test_a_broken_png_records_nothing_even_with_a_good_thumbnail(alice, catalogue, broken):
    """Its thumbnail spares the platform the decode, not the check: the success is not
    recorded (the message is retried) and nothing is stored."""
    with pytest.raises(BrokenResultImage):
        record_success(alice, broken, BLUE_THUMBNAIL)
    assert Job.objects.get().status == "queued" and not JobImage.objects.exists()
