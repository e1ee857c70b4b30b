"""Face restoration (A1111's GFPGAN and CodeFormer), for Extras (`gfpgan_visibility`,
`codeformer_visibility`/`codeformer_weight`) and `restore_faces`.

Models come from `models/GFPGAN/` and `models/Codeformer/` (catalogue kind "face_restorer", the
architecture read from the file); the loaders are ours (gpu_worker.gfpgan_arch builds
GFPGANv1Clean, gpu_worker.codeformer_arch CodeFormer v0.1.0, each from the state-dict layout it
detects), safetensors without pickle, a .pth only with --allow-pickle through torch's
weights-only loader. The platform decides whether a job may use CodeFormer (its licence is
non-commercial: gpu_worker.face_licences, the operator's opt-in); the worker runs what it is sent.

With a face detector in `models/FaceDetection/` (gpu_worker.face_detection: OpenCV's YuNet, an
ONNX file the operator drops in), each face found is aligned to GFPGAN's template, restored and
pasted back; no face found leaves the image as it is. None ships with Atelier (its weights would
be a download): then restoration works as GFPGAN's "aligned" mode, the whole image resized to the
model's face size (512 px for the released models), restored, resized back and blended in at
the visibility, which suits portraits whose face fills the frame.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gpu_worker.codeformer_arch import CodeFormer, CodeFormerLayoutError, build_codeformer
from gpu_worker.face_detection import alignment, crop_face, detect_landmarks, paste_face
from gpu_worker.face_licences import CODEFORMER, GFPGAN, LABELS, architecture_of
from gpu_worker.gfpgan_arch import GfpganClean, GfpganConfig
from gpu_worker.job_outcome import JobFailed
from gpu_worker.params import CODE_FORMER_WEIGHT
from gpu_worker.weights_files import load_weights_file

FaceRestorer = GfpganClean | CodeFormer


class FaceModelError(ValueError):
    """A file that is not a face restorer we can run."""


def build_face_restorer(state: dict[str, Any]) -> FaceRestorer:
    for wrapper in ("params_ema", "params"):  # BasicSR's training checkpoints
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    architecture = architecture_of(state)
    if architecture == CODEFORMER:
        try:
            return build_codeformer(state)
        except CodeFormerLayoutError as exc:
            raise FaceModelError(f"the weights do not fit CodeFormer's layout: {exc}") from exc
    if architecture != GFPGAN:
        label = LABELS.get(architecture, "an unknown architecture")
        raise FaceModelError(f"{label}: only GFPGAN (v1.3/v1.4) and CodeFormer are supported")
    try:
        model = GfpganClean(GfpganConfig.from_state(state))
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as exc:
        raise FaceModelError(f"the weights do not fit GFPGAN's layout: {exc}") from exc
    return model.eval()


def load_face_restorer(path: Path, *, allow_pickle: bool = False) -> FaceRestorer:
    return load_weights_file(path, build_face_restorer, FaceModelError, allow_pickle=allow_pickle)


def label_of(model: FaceRestorer) -> str:
    """The name A1111 writes in "Face restoration: ..."."""
    return LABELS[CODEFORMER if isinstance(model, CodeFormer) else GFPGAN]


def restore_face(model: FaceRestorer, face: Image.Image, weight: float) -> Image.Image:
    """One face at the model's size in, restored out (`weight`: CodeFormer's fidelity)."""
    parameter = next(model.parameters())
    array = np.asarray(face.convert("RGB"), dtype=np.float32) / 127.5 - 1.0  # RGB in -1..1
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None].to(parameter.device, parameter.dtype)
    with torch.no_grad():
        restored = model(tensor, weight) if isinstance(model, CodeFormer) else model(tensor)
        out = restored[0].float().clamp(-1, 1).cpu()
    pixels = ((out.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)
    return Image.fromarray(pixels)


def restore(
    model: FaceRestorer,
    image: Image.Image,
    visibility: float,
    detector: Path | None = None,
    weight: float = CODE_FORMER_WEIGHT,
) -> Image.Image:
    """Faces restored and blended in at `visibility` (0..1): each face the detector finds, or,
    without a detector, the whole image as one aligned face. `weight` is CodeFormer's (A1111's
    `code_former_weight`: 0 = maximum effect, 1 = minimum); GFPGAN has none."""
    if visibility <= 0:
        return image
    size = model.config.size
    if detector is not None:
        result = image.convert("RGB")
        for landmarks in detect_landmarks(detector, result):
            matrix = alignment(landmarks, size)
            face = restore_face(model, crop_face(result, matrix, size), weight)
            result = paste_face(result, face, matrix, visibility)
        return result
    face = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    restored = restore_face(model, face, weight).resize(image.size, Image.Resampling.LANCZOS)
    if visibility >= 1:
        return restored
    return Image.blend(image.convert("RGB"), restored, visibility)


def restore_for_extras(
    engine: Any, extras: Any, image: Image.Image, tick: Callable[[], None]
) -> Image.Image:
    """Extras' face steps, after the upscale, in A1111's order: GFPGAN at its visibility, then
    CodeFormer at its own with its weight (each blended over the image before it)."""
    detector = engine.face_detector()
    visibility = float(extras["gfpgan_visibility"])
    if visibility > 0:
        model = _model(engine, extras.get("face_restorer") or "", "GFPGAN", "GFPGAN")
        image = restore(model, image, visibility, detector)
        tick()
    visibility = float(extras["codeformer_visibility"])
    if visibility > 0:
        model = _model(engine, extras.get("codeformer") or "", "CodeFormer", "Codeformer")
        image = restore(model, image, visibility, detector, float(extras["codeformer_weight"]))
        tick()
    return image


def _model(engine: Any, name: str, label: str, folder: str) -> FaceRestorer:
    if not name:
        raise JobFailed(f"face restoration needs a {label} model (models/{folder}/)")
    model = engine.face_restorer(engine.resolve("face_restorer", name))
    if label_of(model) != label:
        raise JobFailed(f"{name} is not a {label} model")
    return model
