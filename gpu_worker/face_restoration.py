"""Face restoration (A1111's GFPGAN), for Extras (`gfpgan_visibility`) and `restore_faces`.

Models come from `models/GFPGAN/` (catalogue kind "face_restorer"); the loader is ours
(gpu_worker.gfpgan_arch builds GFPGANv1Clean from the state-dict layout it detects), safetensors
without pickle, a .pth only with --allow-pickle through torch's weights-only loader. Only
architectures whose licence allows a paid service run (gpu_worker.face_licences: GFPGAN is
Apache-2.0; CodeFormer is refused here: it has no loader, and its licence needs the operator).

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

from gpu_worker.face_detection import alignment, crop_face, detect_landmarks, paste_face
from gpu_worker.face_licences import GFPGAN, LABELS, architecture_of
from gpu_worker.gfpgan_arch import GfpganClean, GfpganConfig
from gpu_worker.job_outcome import JobFailed
from gpu_worker.weights_files import load_weights_file


class FaceModelError(ValueError):
    """A file that is not a face restorer we can run."""


def build_face_restorer(state: dict[str, Any]) -> GfpganClean:
    for wrapper in ("params_ema", "params"):  # BasicSR's training checkpoints
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
            break
    architecture = architecture_of(state)
    if architecture != GFPGAN:
        label = LABELS.get(architecture, "an unknown architecture")
        raise FaceModelError(f"{label}: only GFPGAN (v1.3/v1.4, the clean layout) is supported")
    try:
        model = GfpganClean(GfpganConfig.from_state(state))
        model.load_state_dict(state, strict=True)
    except (KeyError, RuntimeError) as exc:
        raise FaceModelError(f"the weights do not fit GFPGAN's layout: {exc}") from exc
    return model.eval()


def load_face_restorer(path: Path, *, allow_pickle: bool = False) -> GfpganClean:
    return load_weights_file(path, build_face_restorer, FaceModelError, allow_pickle=allow_pickle)


def restore_face(model: GfpganClean, face: Image.Image) -> Image.Image:
    """One face at the model's size in, restored out."""
    parameter = next(model.parameters())
    array = np.asarray(face.convert("RGB"), dtype=np.float32) / 127.5 - 1.0  # RGB in -1..1
    tensor = torch.from_numpy(array).permute(2, 0, 1)[None].to(parameter.device, parameter.dtype)
    with torch.no_grad():
        out = model(tensor)[0].float().clamp(-1, 1).cpu()
    pixels = ((out.permute(1, 2, 0).numpy() + 1.0) * 127.5).round().astype(np.uint8)
    return Image.fromarray(pixels)


def restore(
    model: GfpganClean, image: Image.Image, visibility: float, detector: Path | None = None
) -> Image.Image:
    """Faces restored and blended in at `visibility` (0..1): each face the detector finds, or,
    without a detector, the whole image as one aligned face."""
    if visibility <= 0:
        return image
    size = model.config.size
    if detector is not None:
        result = image.convert("RGB")
        for landmarks in detect_landmarks(detector, result):
            matrix = alignment(landmarks, size)
            face = restore_face(model, crop_face(result, matrix, size))
            result = paste_face(result, face, matrix, visibility)
        return result
    face = image.convert("RGB").resize((size, size), Image.Resampling.LANCZOS)
    restored = restore_face(model, face).resize(image.size, Image.Resampling.LANCZOS)
    if visibility >= 1:
        return restored
    return Image.blend(image.convert("RGB"), restored, visibility)


def restore_for_extras(
    engine: Any, extras: Any, image: Image.Image, tick: Callable[[], None]
) -> Image.Image:
    """Extras' face step, after the upscale (A1111's order): GFPGAN at its visibility."""
    if float(extras["codeformer_visibility"]) > 0:
        raise JobFailed("CodeFormer is not available on this worker")
    visibility = float(extras["gfpgan_visibility"])
    if visibility <= 0:
        return image
    name = extras.get("face_restorer") or ""
    if not name:
        raise JobFailed("face restoration needs a GFPGAN model (models/GFPGAN/)")
    model = engine.face_restorer(engine.resolve("face_restorer", name))
    restored = restore(model, image, visibility, engine.face_detector())
    tick()
    return restored
