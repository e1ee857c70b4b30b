"""Result PNGs carried beside the 'succeeded' event, as bytes in Redis, not as base64 inside it.

A result's PNG used to travel as base64 text inside the event's JSON, which the GPU worker's
sending thread paid for in base64 and JSON (holding the GIL its sampling thread needs) and the
platform worker in fetching, parsing and decoding it: bench_result_channel measures the
worker's side (17.4 -> 2.0 ms of CPU per 1024x1024 event), bench_record_path the platform's
(35.8 -> 17.5 ms on PostgreSQL). Now, when the platform's
request asks for it (`result_pngs_in_redis`), the worker SETs each PNG's bytes under a key
named by the job, its attempt and the image's place (one pipelined round trip, before the event
is sent), and the event's image says `png_in_redis` instead of carrying `png_b64`. The platform
reads them with one MGET, names the keys itself (a worker cannot point it at another job's
data), and deletes them once the images are stored.

A key lives seven days (`PNG_TTL_SECONDS`, Dramatiq's dead-message TTL), so a platform worker
that is down for days still finds the images when it comes back; an event left unread longer,
or a Redis that lost its data, loses them (the platform then fails the job and gives its
credits back). If Redis refuses the SET, the worker falls back to base64 in the event, which
its outbox keeps until Redis answers.

Both sides import this module: the key's shape is defined once. Torch-free and Django-free.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any, cast

from gpu_worker.protocol import ResultImage

KEY = "atelier:result-png:{job_id}:{attempt}:{index}"
PNG_TTL_SECONDS = 7 * 24 * 3600  # Dramatiq's default dead-message TTL


def png_key(job_id: str, attempt: int, index: int) -> str:
    return KEY.format(job_id=job_id, attempt=int(attempt), index=index)


def png_of(image: ResultImage) -> bytes:
    """A result image's PNG, however the worker holds it (bytes, or base64 in the event)."""
    png = image.get("png")
    return png if png is not None else base64.b64decode(image.get("png_b64") or "")


def for_the_wire(
    client: Any, job_id: str, attempt: int, images: Sequence[ResultImage]
) -> list[ResultImage]:
    """The worker's side: the images as the event carries them. Each one the encoder left as
    bytes (`png`) is SET in Redis (all in one round trip) and marked `png_in_redis`; raises
    what the client raises (the caller falls back to `with_base64`)."""
    wire: list[ResultImage] = []
    pipe = client.pipeline(transaction=False)
    for index, image in enumerate(images):
        png = image.get("png")
        if png is None:  # already base64 (an extras job, a worker's own fallback)
            wire.append(image)
            continue
        pipe.set(png_key(job_id, attempt, index), png, ex=PNG_TTL_SECONDS)
        sent = _without_bytes(image)
        sent["png_in_redis"] = True
        wire.append(sent)
    if len(pipe):
        pipe.execute()
    return wire


def with_base64(images: Sequence[ResultImage]) -> list[ResultImage]:
    """The images with their PNG as base64 in the event (Redis refused the bytes, or the
    platform did not ask for them there)."""
    wire: list[ResultImage] = []
    for image in images:
        png = image.get("png")
        if png is None:
            wire.append(image)
            continue
        sent = _without_bytes(image)
        sent["png_b64"] = base64.b64encode(png).decode("ascii")
        wire.append(sent)
    return wire


def _without_bytes(image: ResultImage) -> ResultImage:
    return cast(ResultImage, {k: v for k, v in image.items() if k != "png"})


def read_pngs(
    client: Any, job_id: str, attempt: int, images: Sequence[ResultImage]
) -> list[bytes | None]:
    """The platform's side: for each image marked `png_in_redis`, its bytes (None when Redis
    no longer has them); None for the others. One MGET, only when some image is marked."""
    places = [i for i, image in enumerate(images) if image.get("png_in_redis")]
    found: list[bytes | None] = [None] * len(images)
    if places:
        values = client.mget([png_key(job_id, attempt, i) for i in places])
        for index, value in zip(places, values, strict=True):
            found[index] = value
    return found


def forget_pngs(client: Any, job_id: str, attempt: int, images: Sequence[ResultImage]) -> None:
    """Delete the keys of the images marked `png_in_redis` (once they are stored)."""
    keys = [png_key(job_id, attempt, i) for i, im in enumerate(images) if im.get("png_in_redis")]
    if keys:
        client.delete(*keys)
