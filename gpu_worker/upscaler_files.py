"""An upscaler file's native factor, read from its safetensors header (tensor names and shapes)
alone. Torch-free: the catalogue scan (worker and web) reports it, and /sdapi/v1/upscalers lists
it as A1111's `scale`. The layouts are the ones gpu_worker.upscalers builds (SwinIR and HAT
through gpu_worker.upscaler_layouts, the rules the worker builds them by)."""

from __future__ import annotations

import math
import re
from typing import Any

from gpu_worker.model_files import tensors
from gpu_worker.upscaler_layouts import detect, native_scale

RE_OLD_LAYER = re.compile(r"^model\.(\d+)\.weight$")
RE_NEW_UP = re.compile(r"^(?:conv_up(\d)|ups\.(\d+))\.weight$")
UNSHUFFLE_BY_CHANNELS = {3: 1, 12: 2, 48: 4}  # RRDB x2/x1 models pixel-unshuffle their input


def _shape(entries: dict[str, dict[str, Any]], key: str) -> list[int]:
    return list(entries.get(key, {}).get("shape") or [])


def upscaler_scale(header: dict[str, Any]) -> int | None:
    """The factor one run of the model upscales by; None for a layout we do not know."""
    entries = tensors(header)
    shapes = {k: list(v.get("shape") or []) for k, v in entries.items()}
    if detect(shapes) is not None:  # SwinIR / HAT, before ESRGAN: they share `conv_first`
        return native_scale(shapes)
    if "model.0.weight" in entries:  # original ESRGAN: upsampling convs between trunk and HR
        layers = sorted(int(m.group(1)) for k in entries if (m := RE_OLD_LAYER.match(k)))
        return _rrdb_scale(len([i for i in layers if i > 0]) - 2, _shape(entries, "model.0.weight"))
    if "conv_first.weight" in entries and "body.0.rdb1.conv1.weight" in entries:  # BasicSR RRDB
        ups = sum(1 for k in entries if RE_NEW_UP.match(k))
        return _rrdb_scale(ups, _shape(entries, "conv_first.weight"))
    body = sorted(int(k.split(".")[1]) for k in entries if re.match(r"^body\.\d+\.weight$", k))
    if body and len(_shape(entries, "body.1.weight")) == 1:  # compact: PReLU weights are 1-D
        channels = _shape(entries, f"body.{body[-1]}.weight")[:1]
        scale = math.isqrt(channels[0] // 3) if channels else 0
        return scale if scale and 3 * scale * scale == channels[0] else None
    return None


def _rrdb_scale(upsamples: int, first_conv: list[int]) -> int | None:
    unshuffle = UNSHUFFLE_BY_CHANNELS.get(first_conv[1]) if len(first_conv) > 1 else None
    if upsamples < 0 or unshuffle is None:
        return None
    return max(1, 2**upsamples // unshuffle)
