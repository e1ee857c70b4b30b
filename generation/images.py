"""Services on generated images."""

from __future__ import annotations

from django.db import transaction

from generation.models import JobImage


def delete_image(image: JobImage) -> None:
    """Delete the row, then its files once that is committed (a rollback keeps both)."""
    stored = [(f.storage, f.name) for f in (image.file, image.thumbnail) if f]
    with transaction.atomic():
        image.delete()
        transaction.on_commit(lambda: [storage.delete(name) for storage, name in stored])
