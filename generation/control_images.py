"""ControlNet units' images, stored once by content: a unit in `Job.params` names its image by
sha256, and the job's message carries the PNGs (job_messages.build_request).

Content-addressed, so the same control image used by many jobs is one file, and a file written
for a submission that then fails (no credits) is only a duplicate-free leftover.
"""

from __future__ import annotations

from django.core.files.base import ContentFile
from django.core.files.storage import default_storage


def control_image_path(sha256: str) -> str:
    return f"controlnet/{sha256[:2]}/{sha256}.png"


def store_control_images(pngs: dict[str, bytes]) -> None:
    for sha256, png in pngs.items():
        path = control_image_path(sha256)
        if not default_storage.exists(path):
            default_storage.save(path, ContentFile(png))


def read_control_image(sha256: str) -> bytes:
    with default_storage.open(control_image_path(sha256), "rb") as handle:
        return handle.read()
