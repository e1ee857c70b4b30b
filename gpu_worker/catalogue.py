"""The model catalogue: what lies in the models folder (A1111 layout). Torch-free.

The web process imports this to list models; the worker to resolve a request's names. A name is
only ever looked up in the scanned catalogue: it never becomes a path, so `../x` is simply an
unknown model. Hashes are cached by path + size + mtime so a restart does not rehash gigabytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from gpu_worker.face_licences import architecture_from_header
from gpu_worker.model_files import (
    ARCHITECTURE_BY_FAMILY,
    FAMILY_BY_CONTEXT,
    UnreadableModel,
    detect_family_from_header,
    read_safetensors_header,
)
from gpu_worker.protocol import ModelInventoryEntry
from gpu_worker.upscaler_files import upscaler_scale

__all__ = ["UnreadableModel", "read_safetensors_header"]  # re-exported for existing callers

Kind = Literal["checkpoint", "lora", "vae", "embedding", "controlnet", "upscaler", "face_restorer"]
FOLDERS: dict[Kind, str] = {
    "checkpoint": "Stable-diffusion",
    "lora": "Lora",
    "vae": "VAE",
    "embedding": "embeddings",
    "controlnet": "ControlNet",
    "upscaler": "ESRGAN",
    "face_restorer": "GFPGAN",
}
# More folders of a kind, as A1111 has them (gpu_worker.upscalers detects each layout).
MORE_FOLDERS: dict[Kind, tuple[str, ...]] = {
    "upscaler": ("RealESRGAN", "SwinIR", "HAT", "DAT"),
    "face_restorer": ("Codeformer",),  # listed with its architecture; the licence gate decides
}
SAFE_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")
HASH_CACHE_VERSION = 1
# A diffusers-format ControlNet folder (save_pretrained's layout) counts as one ControlNet.
CONTROLNET_FOLDER_FILES = ("config.json", "diffusion_pytorch_model.safetensors")


class UnknownModel(LookupError):
    def __init__(self, kind: str, name: str, known: list[str]) -> None:
        self.kind, self.name = kind, name
        listing = ", ".join(known) if known else "none installed"
        super().__init__(f"unknown {kind} {name!r} (available: {listing})")


@dataclass(frozen=True)
class CatalogueItem:
    name: str
    kind: Kind
    path: Path
    filename: str  # relative to the models folder
    family: str  # sd1 / sd2 / sdxl / unknown
    architecture: str | None  # config folder under gpu_worker/configs, when known
    size_bytes: int
    sha256: str
    is_folder: bool = False  # diffusers-format folder
    is_pickle: bool = False
    scale: int | None = None  # upscalers: the native factor, when the header says it

    @property
    def short_hash(self) -> str:
        return self.sha256[:10]

    def inventory_entry(self) -> ModelInventoryEntry:
        entry = ModelInventoryEntry(
            name=self.name,
            filename=self.filename,
            kind=self.kind,
            family=self.family,
            size_bytes=self.size_bytes,
            sha256=self.sha256,
            short_hash=self.short_hash,
        )
        if self.scale:
            entry["scale"] = self.scale
        return entry


@dataclass
class Catalogue:
    models_dir: Path
    items: dict[tuple[str, str], CatalogueItem] = field(default_factory=dict)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (filename, why)

    def entries(self, kind: Kind | None = None) -> list[ModelInventoryEntry]:
        return [
            item.inventory_entry()
            for item in sorted(self.items.values(), key=lambda i: (i.kind, i.name.lower()))
            if kind is None or item.kind == kind
        ]

    def names(self, kind: Kind) -> list[str]:
        return sorted((i.name for i in self.items.values() if i.kind == kind), key=str.lower)

    def resolve(self, kind: Kind, name: str) -> CatalogueItem:
        """Look a name up (also accepting `name.safetensors` and A1111 titles `x [hash]`)."""
        candidate = name.strip()
        if candidate.endswith("]") and " [" in candidate:
            candidate = candidate.rsplit(" [", 1)[0]
        for suffix in SAFE_SUFFIXES + PICKLE_SUFFIXES:
            if candidate.endswith(suffix):
                candidate = candidate[: -len(suffix)]
        item = self.items.get((kind, candidate))
        if item is None:
            raise UnknownModel(kind, name, self.names(kind))
        return item


def scan_models(
    models_dir: Path | str, *, allow_pickle: bool = False, hash_cache: Path | None = None
) -> Catalogue:
    """Scan the A1111 folders under models_dir. Missing folders are simply empty."""
    models_dir = Path(models_dir)
    cache = _HashCache(hash_cache or models_dir / ".atelier-hashes.json")
    catalogue = Catalogue(models_dir=models_dir)
    folders = [(kind, folder) for kind, folder in FOLDERS.items()]
    folders += [(kind, folder) for kind, more in MORE_FOLDERS.items() for folder in more]
    for kind, folder in folders:
        root = models_dir / folder
        if not root.is_dir():
            continue
        for path in sorted(_candidates(root, kind)):
            relative = path.relative_to(models_dir).as_posix()
            is_pickle = path.suffix.lower() in PICKLE_SUFFIXES
            if is_pickle and not allow_pickle:
                catalogue.refused.append((relative, "pickle file refused (use --allow-pickle)"))
                continue
            name = path.stem if path.is_file() else path.name
            if (kind, name) in catalogue.items:
                catalogue.refused.append((relative, f"duplicate name {name!r}"))
                continue
            try:
                family, architecture = detect_family(path, kind)
                scale = _upscaler_scale(path) if kind == "upscaler" else None
                size, sha = cache.digest(path)
            except (OSError, UnreadableModel) as exc:
                catalogue.refused.append((relative, f"unreadable: {exc}"))
                continue
            catalogue.items[(kind, name)] = CatalogueItem(
                name=name,
                kind=kind,
                path=path,
                filename=relative,
                family=family,
                architecture=architecture,
                size_bytes=size,
                sha256=sha,
                is_folder=path.is_dir(),
                is_pickle=is_pickle,
                scale=scale,
            )
    cache.save()
    return catalogue


def _candidates(root: Path, kind: Kind) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if kind == "checkpoint" and (here / "model_index.json").is_file() and here != root:
            found.append(here)  # a diffusers-format folder counts as one checkpoint
            dirnames.clear()
            continue
        if kind == "controlnet" and here != root and is_controlnet_folder(here):
            found.append(here)
            dirnames.clear()
            continue
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if filename.startswith("."):
                continue
            if filename.lower().endswith(SAFE_SUFFIXES + PICKLE_SUFFIXES):
                found.append(here / filename)
    return found


def is_controlnet_folder(path: Path) -> bool:
    return all((path / name).is_file() for name in CONTROLNET_FOLDER_FILES)


# --- family detection (the header rules live in model_files) ----------------------------------


def detect_family(path: Path, kind: Kind) -> tuple[str, str | None]:
    """(family, config architecture) from a file's header or a diffusers folder's configs."""
    if path.is_dir() and kind == "controlnet":
        return _controlnet_folder_family(path)
    if path.is_dir():
        index = path / "model_index.json"
        try:
            class_name = str(json.loads(index.read_text()).get("_class_name", ""))
        except (OSError, ValueError, AttributeError):
            class_name = ""
        if "XL" in class_name:
            return "sdxl", None
        unet = path / "unet" / "config.json"
        if unet.is_file():
            context = json.loads(unet.read_text()).get("cross_attention_dim")
            family = FAMILY_BY_CONTEXT.get(context, "unknown")
            return family, None
        return "unknown", None
    if path.suffix.lower() != ".safetensors":
        return "unknown", None
    if kind == "face_restorer":  # its "family" is its architecture: the licence gate reads it
        return architecture_from_header(read_safetensors_header(path)), None
    return detect_family_from_header(read_safetensors_header(path), kind)


def _upscaler_scale(path: Path) -> int | None:
    """A safetensors upscaler's native factor from its header (a pickle's is not read)."""
    if path.suffix.lower() != ".safetensors":
        return None
    return upscaler_scale(read_safetensors_header(path))


def _controlnet_folder_family(path: Path) -> tuple[str, str | None]:
    """A diffusers ControlNet's family from its config's cross-attention width."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise UnreadableModel(f"{path.name}/config.json: {exc}") from exc
    context = config.get("cross_attention_dim") if isinstance(config, dict) else None
    family = FAMILY_BY_CONTEXT.get(context, "unknown") if isinstance(context, int) else "unknown"
    return family, ARCHITECTURE_BY_FAMILY.get(family)


# --- hashing, cached ---------------------------------------------------------------------------


class _HashCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.dirty = False
        try:
            data = json.loads(path.read_text())
            self.entries: dict[str, dict] = (
                data["entries"] if data.get("version") == HASH_CACHE_VERSION else {}
            )
        except (OSError, ValueError, KeyError, TypeError):
            self.entries = {}

    def digest(self, path: Path) -> tuple[int, str]:
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        size = sum(f.stat().st_size for f in files)
        mtime = max((f.stat().st_mtime_ns for f in files), default=0)
        key = str(path.resolve())
        cached = self.entries.get(key)
        if cached and cached["size"] == size and cached["mtime_ns"] == mtime:
            return size, cached["sha256"]
        if path.is_dir():
            outer = hashlib.sha256()
            for f in files:
                outer.update(f.relative_to(path).as_posix().encode() + b"\0")
                outer.update(sha256_file(f).encode())
            sha = outer.hexdigest()
        else:
            sha = sha256_file(path)
        self.entries[key] = {"size": size, "mtime_ns": mtime, "sha256": sha}
        self.dirty = True
        return size, sha

    def save(self) -> None:
        if not self.dirty:
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"version": HASH_CACHE_VERSION, "entries": self.entries}))
            os.replace(tmp, self.path)
        except OSError:
            pass  # a read-only models folder: hashing again next time is the only cost


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()
