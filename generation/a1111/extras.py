"""/sdapi/v1/extra-single-image and /extra-batch-images: A1111's extras tab as Extras jobs.

Each image becomes one Extras job (generation.extras: price per output megapixel, credit hold,
queue, My images), waited for as txt2img is (a1111.waiting). A1111's request defaults apply to
omitted fields (upscaler_1 "None", upscaling_resize 2, 512x512 with crop); unknown fields are
ignored as A1111's request models ignore them, and a value asking for what we lack (CodeFormer
without the operator's licence setting, saving to a folder) is a 422 naming the field. The
answer is A1111's: `{html_info, image}` or `{html_info, images}`.
"""

from __future__ import annotations

import asyncio
import base64
import html
from typing import Any

from asgiref.sync import sync_to_async
from django.utils.translation import gettext as _

from generation.a1111.errors import A1111Error
from generation.a1111.waiting import wait_until_finished
from generation.extras import submit_extras, validate_extras
from generation.models import Job, JobImage
from generation.submission import SubmissionError

EXTRAS_DEFAULTS: dict[str, Any] = {
    "resize_mode": 0,
    "show_extras_results": True,
    "gfpgan_visibility": 0,
    "codeformer_visibility": 0,
    "codeformer_weight": 0,
    "upscaling_resize": 2,
    "upscaling_resize_w": 512,
    "upscaling_resize_h": 512,
    "upscaling_crop": True,
    "upscaler_1": "None",
    "upscaler_2": "None",
    "extras_upscaler_2_visibility": 0,
    "upscale_first": False,  # A1111 orders its postprocessing itself: upscale, then faces
}
# A1111 field -> ours (gpu_worker.params.ExtrasParams)
FIELDS = {
    "resize_mode": "resize_mode",
    "upscaling_resize": "scale",
    "upscaling_resize_w": "target_width",
    "upscaling_resize_h": "target_height",
    "upscaling_crop": "crop",
    "upscaler_1": "upscaler_1",
    "upscaler_2": "upscaler_2",
    "extras_upscaler_2_visibility": "upscaler_2_visibility",
    "gfpgan_visibility": "gfpgan_visibility",
    "codeformer_visibility": "codeformer_visibility",
    "codeformer_weight": "codeformer_weight",
}
OURS_TO_A1111 = {ours: theirs for theirs, ours in FIELDS.items()} | {"image": "image"}
# The batch form's own fields, which ask the server to read or write its folders.
FOLDER_FIELDS = ("input_dir", "output_dir")


def _error(exc: SubmissionError, prefix: str = "") -> A1111Error:
    field = prefix + OURS_TO_A1111.get(exc.field, exc.field)
    detail = exc.message
    if detail.startswith(exc.field + " "):  # "scale must be..." -> "upscaling_resize must be..."
        detail = field + detail[len(exc.field) :]
    return A1111Error(exc.status, detail, field)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    options = {}
    for theirs, ours in FIELDS.items():
        value = body.get(theirs)
        options[ours] = EXTRAS_DEFAULTS[theirs] if value is None else value
    if isinstance(options["upscaler_1"], str) and options["upscaler_1"].strip() == "":
        options["upscaler_1"] = "None"
    return options


def single_requests(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        raise A1111Error(422, _("the request body must be a JSON object"), "body")
    image = body.get("image")
    if not image or not isinstance(image, str):
        raise A1111Error(422, _("image must be a base64 image"), "image")
    return [{**_options(body), "image": image}]


def batch_requests(body: Any) -> list[dict[str, Any]]:
    if not isinstance(body, dict):
        raise A1111Error(422, _("the request body must be a JSON object"), "body")
    for name in FOLDER_FIELDS:
        if body.get(name):
            raise A1111Error(
                422, _("%(field)s: server folders are not available") % {"field": name}, name
            )
    listing = body.get("imageList")
    if not isinstance(listing, list) or not listing:
        raise A1111Error(422, _("imageList must be a list of {data, name}"), "imageList")
    requests = []
    for index, item in enumerate(listing):
        data = item.get("data") if isinstance(item, dict) else None
        if not data or not isinstance(data, str):
            field = f"imageList[{index}].data"
            raise A1111Error(422, _("%(field)s must be a base64 image") % {"field": field}, field)
        requests.append({**_options(body), "image": data})
    return requests


def _check_all(user: Any, requests: list[dict[str, Any]], batch: bool) -> None:
    """Validate every image before any is submitted, so a bad one queues none."""
    for index, request in enumerate(requests):
        try:
            validate_extras(user, request)
        except SubmissionError as exc:
            prefix = f"imageList[{index}]." if batch and exc.field == "image" else ""
            raise _error(exc, prefix) from None


def _submit_all(user: Any, requests: list[dict[str, Any]]) -> list[Job]:
    jobs = []
    for request in requests:
        try:
            jobs.append(submit_extras(user, request))
        except SubmissionError as exc:
            raise _error(exc) from None
    return jobs


def _answer(jobs: list[Job]) -> tuple[list[str], str]:
    images, lines = [], []
    for job in jobs:
        image = JobImage.objects.filter(job=job).order_by("index").first()
        if image is None:
            continue
        with image.file.open("rb") as fh:
            images.append(base64.b64encode(fh.read()).decode("ascii"))
        lines.append(image.infotext)
    info = "<br>\n".join(html.escape(line) for line in dict.fromkeys(lines))
    return images, f"<p>{info}</p>"


async def run(user: Any, requests: list[dict[str, Any]], batch: bool) -> dict[str, Any]:
    await sync_to_async(_check_all)(user, requests, batch)
    # Shielded: a hang-up must not cancel the submissions half-way (a1111.waiting.submit).
    jobs = await asyncio.shield(sync_to_async(_submit_all)(user, requests))
    for job in jobs:
        status = await wait_until_finished(job.pk, job.owner_id)
        if status == Job.Status.FAILED:
            error = await Job.objects.values_list("error", flat=True).aget(pk=job.pk)
            raise A1111Error(502, _("the job failed: %s") % (error or _("unknown error")))
    images, html_info = await sync_to_async(_answer)(jobs)
    if batch:
        return {"html_info": html_info, "images": images}
    return {"html_info": html_info, "image": images[0] if images else ""}
