"""Training datasets: images (a zip, or many files) with kohya-style captions, checked and
re-encoded before anything is kept.

Every file of an upload is checked first, and nothing is written unless all pass: an image is
read only after its header says its size is within the tier's pixel limit (a decompression bomb
is refused before it is decoded), then re-encoded as PNG with its EXIF orientation applied and
every metadata chunk dropped; a `.txt` is the caption of the image of the same name. Anything
else, an unreadable image, a zip member too large or a zip too large once unpacked is refused
with the file named.
"""

from __future__ import annotations

import hashlib
import io
import warnings
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import IO, Any

from django.core.files.base import ContentFile
from django.db import transaction
from django.db.models import Max, Q
from PIL import Image, ImageOps, UnidentifiedImageError

from accounts.tiers import tier_of
from generation.models import Job, TrainingDataset, TrainingImage

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_EXTENSION = ".txt"
MAX_CAPTION_CHARS = 2000
MAX_NAME_CHARS = 100
MiB = 2**20


class DatasetError(Exception):
    """A refused upload or edit; `field` names what to fix, `status` the HTTP answer."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.message, self.status = field, message, status

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "detail": self.message}


@dataclass(frozen=True)
class DatasetLimits:
    max_images: int
    max_bytes: int
    max_pixels: int


def limits_for(user: Any) -> DatasetLimits:
    tier = tier_of(user)
    return DatasetLimits(
        max_images=tier.training_max_images,
        max_bytes=tier.training_dataset_mb * MiB,
        max_pixels=tier.training_max_pixels,
    )


@dataclass
class _Image:
    name: str
    png: bytes
    width: int
    height: int


def _files_of(uploads: Iterable[tuple[str, IO[bytes]]], limits: DatasetLimits) -> list[tuple]:
    """(name, bytes) of every uploaded file, a zip's members unpacked, within the byte limit."""
    files: list[tuple[str, bytes]] = []
    budget = limits.max_bytes
    too_big = f"the upload is larger than your limit of {limits.max_bytes // MiB} MiB"
    for name, stream in uploads:
        if name.lower().endswith(".zip"):
            try:
                archive = zipfile.ZipFile(stream)
                members = [m for m in archive.infolist() if not m.is_dir()]
            except (zipfile.BadZipFile, OSError, ValueError):
                raise DatasetError("files", f"{name} is not a readable zip file") from None
            for member in members:
                path = PurePosixPath(member.filename)
                if path.name.startswith(".") or "__MACOSX" in path.parts:
                    continue  # Finder's and editors' litter, not the member's files
                label = f"{name}: {member.filename}"
                # The declared size is checked first, then the bytes actually read: a zip's
                # header may lie, so never read more than what is left of the budget.
                if member.file_size > budget:
                    raise DatasetError("files", f"{label} unpacks past the limit: {too_big}")
                with archive.open(member) as fh:
                    data = fh.read(budget + 1)
                if len(data) > budget:
                    raise DatasetError("files", f"{label} unpacks past the limit: {too_big}")
                budget -= len(data)
                files.append((path.name, data))
        else:
            data = stream.read(budget + 1)
            if len(data) > budget:
                raise DatasetError("files", too_big, 413)
            budget -= len(data)
            files.append((PurePosixPath(name.replace("\\", "/")).name, data))
    return files


def reencode(name: str, data: bytes, max_pixels: int) -> _Image:
    """The image as a metadata-free RGB PNG, or DatasetError naming the file."""
    with warnings.catch_warnings():
        # Pillow's own bomb check (a warning past MAX_IMAGE_PIXELS) becomes a refusal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise DatasetError(
                        "files",
                        f"{name} is {width}x{height}: more than your limit of {max_pixels} "
                        "pixels per image",
                    )
                image.load()
                upright = ImageOps.exif_transpose(image).convert("RGB")
        except DatasetError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise DatasetError("files", f"{name} is a decompression bomb") from None
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
            raise DatasetError("files", f"{name} is not a readable image") from None
    out = io.BytesIO()
    upright.save(out, "PNG")  # no info, exif or text chunks: nothing of the original's metadata
    return _Image(name=name, png=out.getvalue(), width=upright.width, height=upright.height)


def _caption(name: str, data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig").strip()
    except UnicodeDecodeError:
        raise DatasetError("files", f"{name} is not UTF-8 text") from None
    if len(text) > MAX_CAPTION_CHARS:
        raise DatasetError("files", f"{name} is longer than {MAX_CAPTION_CHARS} characters")
    return text


def read_upload(
    uploads: Iterable[tuple[str, IO[bytes]]], limits: DatasetLimits, existing: int = 0
) -> list[tuple[_Image, str]]:
    """Check every file and pair images with captions; nothing is kept yet."""
    images: dict[str, _Image] = {}
    captions: dict[str, str] = {}
    for name, data in _files_of(uploads, limits):
        stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix.lower()
        if suffix == CAPTION_EXTENSION:
            captions[stem] = _caption(name, data)
        elif suffix in IMAGE_EXTENSIONS:
            if stem in images:
                raise DatasetError("files", f"two images are named {stem} (captions pair by name)")
            images[stem] = reencode(name, data, limits.max_pixels)
        else:
            raise DatasetError(
                "files", f"{name} is neither an image ({', '.join(IMAGE_EXTENSIONS)}) nor a .txt"
            )
    if not images:
        raise DatasetError("files", "the upload holds no image")
    for stem in captions:
        if stem not in images:
            raise DatasetError("files", f"{stem}.txt has no image of the same name")
    if existing + len(images) > limits.max_images:
        raise DatasetError(
            "files",
            f"{existing + len(images)} images is more than your limit of {limits.max_images} "
            "per dataset",
        )
    return [(images[stem], captions.get(stem, "")) for stem in sorted(images)]


def _name(value: Any, field: str, *, required: bool) -> str:
    text = value.strip() if isinstance(value, str) else ""
    if required and not text:
        raise DatasetError(field, f"{field} is required")
    if len(text) > MAX_NAME_CHARS:
        raise DatasetError(field, f"{field} must be at most {MAX_NAME_CHARS} characters")
    return text


def create_dataset(
    user: Any, name: Any, trigger_word: Any, uploads: Iterable[tuple[str, IO[bytes]]]
) -> TrainingDataset:
    name = _name(name, "name", required=True)
    trigger = _name(trigger_word, "trigger_word", required=False)
    checked = read_upload(uploads, limits_for(user))
    with transaction.atomic():
        dataset = TrainingDataset.objects.create(owner=user, name=name, trigger_word=trigger)
        _keep(dataset, checked)
    return dataset


def add_images(
    user: Any, dataset: TrainingDataset, uploads: Iterable[tuple[str, IO[bytes]]]
) -> TrainingDataset:
    _require_owner(user, dataset)
    checked = read_upload(uploads, limits_for(user), existing=dataset.images.count())
    with transaction.atomic():
        _keep(dataset, checked)
    return dataset


def _keep(dataset: TrainingDataset, checked: list[tuple[_Image, str]]) -> None:
    start = (dataset.images.aggregate(last=Max("position"))["last"] or 0) + 1
    for offset, (image, caption) in enumerate(checked):
        row = TrainingImage(
            dataset=dataset,
            position=start + offset,
            original_name=image.name[:255],
            sha256=hashlib.sha256(image.png).hexdigest(),
            size_bytes=len(image.png),
            width=image.width,
            height=image.height,
            caption=caption,
        )
        row.file.save("image.png", ContentFile(image.png), save=False)
        row.save()


def _require_owner(user: Any, dataset: TrainingDataset) -> None:
    if dataset.owner_id != getattr(user, "pk", None):
        raise DatasetError("dataset", "no such dataset", 404)


def update_dataset(user: Any, dataset: TrainingDataset, changes: dict[str, Any]) -> None:
    _require_owner(user, dataset)
    if "name" in changes:
        dataset.name = _name(changes["name"], "name", required=True)
    if "trigger_word" in changes:
        dataset.trigger_word = _name(changes["trigger_word"], "trigger_word", required=False)
    dataset.save()


def set_caption(user: Any, image: TrainingImage, caption: Any) -> TrainingImage:
    """Edit one caption (a running job keeps the captions it was submitted with)."""
    _require_owner(user, image.dataset)
    if not isinstance(caption, str) or len(caption) > MAX_CAPTION_CHARS:
        raise DatasetError("caption", f"caption must be text of at most {MAX_CAPTION_CHARS} chars")
    image.caption = caption.strip()
    image.save(update_fields=["caption"])
    return image


def _refuse_in_use(dataset: TrainingDataset) -> None:
    busy = Job.objects.filter(
        owner_id=dataset.owner_id, mode=Job.Mode.TRAIN, status__in=Job.UNFINISHED
    ).filter(  # as its instance images or as its class images
        Q(params__train__dataset_id=dataset.pk) | Q(params__train__class_dataset_id=dataset.pk)
    )
    if busy.exists():
        raise DatasetError(
            "dataset", "a training job still uses this dataset: cancel it first", 409
        )


def delete_image(user: Any, image: TrainingImage) -> None:
    """Refused while a job trains on its dataset (its worker fetches the images)."""
    _require_owner(user, image.dataset)
    _refuse_in_use(image.dataset)
    image.file.delete(save=False)
    image.delete()


def delete_dataset(user: Any, dataset: TrainingDataset) -> None:
    """Refused while a job trains on it (its worker fetches the images)."""
    _require_owner(user, dataset)
    _refuse_in_use(dataset)
    for image in dataset.images.all():
        image.file.delete(save=False)
    dataset.delete()


def caption_with_trigger(caption: str, trigger_word: str) -> str:
    """kohya's habit: the trigger word first, unless the caption already has it."""
    if not trigger_word or trigger_word.lower() in caption.lower():
        return caption or trigger_word
    return f"{trigger_word}, {caption}" if caption else trigger_word
