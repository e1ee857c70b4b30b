"""The checkpoint merger on the worker: inputs streamed one tensor at a time into a new file.

A1111 loads the three state dicts whole (three models in RAM at once). Here the output's header
is computed first from the inputs' headers (`merge_rules.plan_merge`), written, and then each
output tensor is made from its inputs' tensors and appended, so memory holds a few tensors.
Tensors are read with `pread` from the byte range their (checked) header gives, not through
`safetensors.safe_open`: safe_open maps the whole file, and every page it touches stays in the
process's resident set until the file is closed, so its peak RSS grows to the inputs' size
(bench/bench_merge.py measures both).

Two uses: a merge job (`run_merge_job`: write, then upload to the platform's signed URL, which
checks the hash) and a virtual model (`materialize`: the same bytes written into the worker's
download cache under the recipe hash, then loaded like any checkpoint).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import struct
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gpu_worker.catalogue import CatalogueItem, UnknownModel
from gpu_worker.engine import GenerationResult, JobFailed, JobInterrupted, StepInfo
from gpu_worker.merge_rules import (
    LATENT_CHANNELS,
    InputFacts,
    MergeMismatch,
    MergePlan,
    PlannedTensor,
    inputs_of,
    merge_metadata,
    plan_merge,
)
from gpu_worker.model_files import (
    UnreadableModel,
    detect_family_from_header,
    read_safetensors_header,
)
from gpu_worker.params import MergeParams
from gpu_worker.protocol import GenerationRequest, MergedModel, ModelDelivery
from gpu_worker.result_upload import UploadError, upload_file

if TYPE_CHECKING:
    from gpu_worker.engine import Engine, StepObserver
    from gpu_worker.model_downloads import DownloadCache

log = logging.getLogger(__name__)

TORCH_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
HEADER_ALIGN = 8  # safetensors pads its JSON header with spaces to a multiple of 8
LEGACY_HASH_RANGE = (0x100000, 0x10000)  # A1111's old model hash: 64 KiB at 1 MiB

Progress = Callable[[int, int], None]


class TensorFile:
    """One safetensors file read a tensor at a time (header checked by model_files)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.header = read_safetensors_header(path)
        self.fd = os.open(path, os.O_RDONLY)
        (length,) = struct.unpack("<Q", os.pread(self.fd, 8, 0))
        self.data_start = 8 + length

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(self, *exc: object) -> None:
        os.close(self.fd)

    def __contains__(self, key: str) -> bool:
        return key in self.header and key != "__metadata__"

    @property
    def metadata(self) -> dict[str, str]:
        return dict(self.header.get("__metadata__") or {})

    def get(self, key: str) -> torch.Tensor:
        info = self.header[key]
        begin, end = info["data_offsets"]
        buffer = bytearray(end - begin)
        if buffer and os.preadv(self.fd, [buffer], self.data_start + begin) != len(buffer):
            raise UnreadableModel(f"{self.path.name}: short read of {key}")
        dtype = TORCH_DTYPES.get(info["dtype"])
        if dtype is None:
            raise UnreadableModel(f"{self.path.name}: cannot merge dtype {info['dtype']}")
        if not buffer:
            return torch.empty(info["shape"], dtype=dtype)
        return torch.frombuffer(buffer, dtype=dtype).reshape(info["shape"])


def legacy_hash(path: Path) -> str:
    """A1111's old 8-hex model hash (sd_merge_models keeps it beside the sha256)."""
    offset, length = LEGACY_HASH_RANGE
    with path.open("rb") as fh:
        fh.seek(offset)
        return hashlib.sha256(fh.read(length)).hexdigest()[:8]


def _combine(
    method: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None, m: float
) -> torch.Tensor:
    """`(1 - m)·a + m·b` or `a + m·(b - c)`, operation by operation as written (so the result is
    the formula's to the bit), in place on the freshly read tensors: no extra copies in RAM."""
    if method == "Weighted sum":
        return a.mul_(1 - m).add_(b.mul_(m))
    assert c is not None
    return a.add_(b.sub_(c).mul_(m))  # Add difference


def make_tensor(planned: PlannedTensor, method: str, files: dict[str, TensorFile]) -> torch.Tensor:
    """One output tensor, in its output dtype (merged in float32, as A1111's `.float()`)."""
    out_dtype = TORCH_DTYPES[planned.dtype]
    if planned.source == "VAE":
        return files["vae"].get(planned.vae_key).to(out_dtype)
    a = files["primary"].get(planned.key)
    if not planned.merged:
        return a.to(out_dtype)
    af = a.float()  # float32 A is read afresh: the same tensor, changed in place below
    b = files["secondary"].get(planned.key).float()
    c = None
    if method == "Add difference":
        third = files["tertiary"]
        # A1111: a key C lacks contributes no difference
        c = third.get(planned.key).float() if planned.key in third else b.clone()
    if planned.partial_channels:
        # inpaint / pix2pix A: its extra input channels (mask, image) are kept as they are
        af[:, :LATENT_CHANNELS] = _combine(
            method, af[:, :LATENT_CHANNELS].clone(), b, c, planned.weight
        )
        return af.to(out_dtype)
    return _combine(method, af, b, c, planned.weight).to(out_dtype)


def _header_bytes(plan: MergePlan, metadata: dict[str, str]) -> bytes:
    header: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for planned in plan.tensors:
        header[planned.key] = {
            "dtype": planned.dtype,
            "shape": list(planned.shape),
            "data_offsets": [offset, offset + planned.nbytes],
        }
        offset += planned.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % HEADER_ALIGN)
    return struct.pack("<Q", len(raw)) + raw


def write_merge(
    params: MergeParams,
    paths: dict[str, Path],
    names: dict[str, str],
    out: Path,
    progress: Progress | None = None,
) -> MergedModel:
    """Merge the inputs (`paths` by role) into `out`, streaming; returns its sha256 and size.
    Raises MergeMismatch before anything is written when the inputs do not fit."""
    with _open_all(paths) as files:
        family, _arch = detect_family_from_header(files["primary"].header, "checkpoint")
        plan = plan_merge(params, {r: f.header for r, f in files.items()}, family)
        facts = {
            role: InputFacts(
                name=names.get(role, path.stem),
                sha256=_input_sha(params, role),
                legacy_hash=legacy_hash(path),
                metadata=files[role].metadata,
            )
            for role, path in paths.items()
            if role != "vae"
        }
        digest = hashlib.sha256()
        size = 0
        with out.open("wb") as fh:
            head = _header_bytes(plan, merge_metadata(params, facts, plan))
            fh.write(head)
            digest.update(head)
            size += len(head)
            for done, planned in enumerate(plan.tensors, start=1):
                tensor = make_tensor(planned, params["method"], files).contiguous()
                raw = tensor.reshape(-1).view(torch.uint8).numpy()
                if raw.nbytes != planned.nbytes:  # the plan and the data must agree exactly
                    raise UnreadableModel(f"{planned.key}: {raw.nbytes} bytes, planned more")
                fh.write(raw.data)
                digest.update(raw.data)
                size += raw.nbytes
                del tensor, raw
                if progress is not None:
                    progress(done, plan.total)
    return MergedModel(sha256=digest.hexdigest(), size_bytes=size)


def _input_sha(params: MergeParams, role: str) -> str:
    return inputs_of(params)[role]["sha256"]


class _open_all:  # noqa: N801 - a context manager over several files
    def __init__(self, paths: dict[str, Path]) -> None:
        self.paths = paths
        self.files: dict[str, TensorFile] = {}

    def __enter__(self) -> dict[str, TensorFile]:
        try:
            for role, path in self.paths.items():
                self.files[role] = TensorFile(path)
        except BaseException:
            self.__exit__()
            raise
        return self.files

    def __exit__(self, *exc: object) -> None:
        for file in self.files.values():
            file.__exit__()


# --- resolving inputs ---------------------------------------------------------------------------


def input_paths(engine: Engine, params: MergeParams) -> tuple[dict[str, Path], dict[str, str]]:
    """Each input's file on this worker, checked against the hash the recipe pins."""
    paths: dict[str, Path] = {}
    names: dict[str, str] = {}
    for role, pinned in inputs_of(params).items():
        kind = "vae" if role == "vae" else "checkpoint"
        try:
            item = engine.resolve(kind, pinned["name"])
        except UnknownModel as exc:
            raise JobFailed(str(exc)) from exc
        if item.sha256 != pinned["sha256"] or item.is_folder or item.is_pickle:
            raise JobFailed(
                f"{kind} {pinned['name']!r} on this worker is not the file the recipe names "
                f"({item.sha256[:10]} instead of {pinned['sha256'][:10]})"
            )
        paths[role], names[role] = item.path, pinned["name"]
    return paths, names


# --- a merge job --------------------------------------------------------------------------------


def run_merge_job(
    engine: Engine, request: GenerationRequest, observer: StepObserver | None
) -> GenerationResult:
    """Merge, upload the file to the platform (which checks its hash), report it. A cancel
    keeps nothing, so it is reported with no step done: the member is charged nothing."""
    started = time.perf_counter()
    params = request.get("merge")
    upload_url = request.get("upload_url")
    if not params or not upload_url:
        raise JobFailed("a merge job needs its merge parameters and an upload address")
    paths, names = input_paths(engine, params)
    folder = engine.cache_dir / "merges"
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, suffix=".safetensors")
    os.close(fd)
    out = Path(name)

    def progress(done: int, total: int) -> None:
        if observer is not None:
            observer(StepInfo(done, total, 0, None, "merge"))

    try:
        try:
            merged = write_merge(params, paths, names, out, progress)
        except JobInterrupted:
            return GenerationResult(interrupted=True, steps_done=0)
        except MergeMismatch as exc:
            raise JobFailed(str(exc)) from exc
        merge_s = time.perf_counter() - started
        try:
            upload_file(
                upload_url,
                out,
                merged,
                chunk_bytes=int(request.get("upload_chunk_bytes") or 0) or None,
            )
        except UploadError as exc:
            raise JobFailed(f"cannot upload the merged model: {exc}", permanent=False) from exc
    finally:
        out.unlink(missing_ok=True)
    result = GenerationResult(steps_done=0, model=merged)
    result.timings["sampling_s"] = round(merge_s, 4)
    result.timings["total_s"] = round(time.perf_counter() - started, 4)
    return result


# --- a virtual model ----------------------------------------------------------------------------


def materialize(engine: Engine, delivery: ModelDelivery, downloads: DownloadCache) -> CatalogueItem:
    """A virtual model's weights on this worker: computed once into the download cache under
    the recipe hash (the LRU disk budget applies), then a checkpoint like any other."""
    params = delivery.get("recipe")
    if not params:
        raise JobFailed(f"model {delivery['name']!r} has no recipe")
    path = downloads.path_for(delivery["sha256"])
    if path.is_file():
        os.utime(path)
    else:
        paths, names = input_paths(engine, params)
        pinned = {p["sha256"] for p in inputs_of(params).values()}
        downloads.make_room(int(delivery["size_bytes"]), pinned | {delivery["sha256"]})
        fd, name = tempfile.mkstemp(dir=downloads.root, prefix=".merge-", suffix=".part")
        os.close(fd)
        try:
            write_merge(params, paths, names, Path(name))
            os.replace(name, path)
        except MergeMismatch as exc:
            raise JobFailed(str(exc)) from exc
        finally:
            Path(name).unlink(missing_ok=True)
        log.info("computed virtual model %s (%s)", delivery["name"], delivery["sha256"][:10])
    family, architecture = detect_family_from_header(read_safetensors_header(path), "checkpoint")
    return CatalogueItem(
        name=delivery["name"],
        kind="checkpoint",
        path=path,
        filename=f"{delivery['name']}.safetensors",
        family=family,
        architecture=architecture,
        size_bytes=path.stat().st_size,
        sha256=delivery["sha256"],
    )
