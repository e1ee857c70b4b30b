"""Services on generated images."""

from __future__ import annotations

from django.db import transaction

from generation.models import JobImage


def delete_image(image: JobImage) -> None:
    """Delete the row, then its files once that is committed (a rollback keeps both)."""
    stored = [(f.storage, f.name) for f in (image.file, image.thumbnail) if f.name]

    def delete_files() -> None:
        for storage, name in stored:
            storage.delete(name)

    with transaction.atomic():
        image.delete()
        transaction.on_commit(delete_files)
