"""A1111-compatible generation parameters ("infotext"): build, parse, and the PNG chunk. Torch-free.

Layout (reference/a1111-api.md): the prompt (may span lines), an optional `Negative prompt:` line,
then one line of `Key: value` pairs joined by ", ". The gallery imports this for PNG Info.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping
from typing import Any

from PIL import Image, PngImagePlugin

PNG_CHUNK = "parameters"

CORE_KEY_ORDER = (
    "Steps",
    "Sampler",
    "Schedule type",
    "CFG scale",
    "Image CFG scale",
    "Seed",
    "Face restoration",
    "Size",
    "Model hash",
    "Model",
    "VAE hash",
    "VAE",
    "Variation seed",
    "Variation seed strength",
    "Seed resize from",
    "Denoising strength",
    "Clip skip",
    "ENSD",
    "Init image hash",
    "RNG",
    "Tiling",
)
TRAILING_KEYS = ("Version", "User")

# A1111's own expressions (modules/infotext_utils.py).
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
RE_IMAGESIZE = re.compile(r"^(\d+)x(\d+)$")
# ControlNet units, as sd-webui-controlnet writes them ("ControlNet 0": "Module: canny, ...").
CONTROLNET_RESIZE_LABELS = ("Just Resize", "Crop and Resize", "Resize and Fill")
CONTROLNET_MODE_LABELS = {
    "balanced": "Balanced",
    "prompt": "My prompt is more important",
    "controlnet": "ControlNet is more important",
}


def controlnet_unit_text(unit: Mapping[str, Any], model_title: str) -> str:
    """One unit's infotext value; `model_title` is "name [hash]" in images, the name elsewhere."""
    fields = {
        "Module": unit["module"],
        "Model": model_title,
        "Weight": unit["weight"],
        "Resize Mode": CONTROLNET_RESIZE_LABELS[unit["resize_mode"]],
        "Processor Res": unit["processor_res"],
        "Threshold A": unit["threshold_a"],
        "Threshold B": unit["threshold_b"],
        "Guidance Start": unit["guidance_start"],
        "Guidance End": unit["guidance_end"],
        "Pixel Perfect": unit["pixel_perfect"],
        "Control Mode": CONTROLNET_MODE_LABELS[unit["control_mode"]],
    }
    return ", ".join(f"{key}: {value}" for key, value in fields.items())


# A unit's infotext value back into request fields, as strings: the inverse of
# controlnet_unit_text (and of the extension's older "preprocessor: ..., starting/ending: (0, 1)").
RE_CONTROLNET_ITEM = re.compile(r"\s*([A-Za-z][\w /]*):\s*(\([^)]*\)|[^,]*)(?:,|$)")
RE_CONTROLNET_KEY = re.compile(r"^ControlNet(?: (\d+))?$")
CONTROLNET_ITEM_FIELDS = {
    "module": "module",
    "preprocessor": "module",
    "model": "model",
    "weight": "weight",
    "processor res": "processor_res",
    "threshold a": "threshold_a",
    "threshold b": "threshold_b",
    "guidance start": "guidance_start",
    "guidance end": "guidance_end",
    "pixel perfect": "pixel_perfect",
}


def parse_controlnet_unit(text: str) -> dict[str, str]:
    """One "ControlNet N" value as request fields (strings; modes as our values); what is not
    recognised is left out, so the form keeps its default for it."""
    unit: dict[str, str] = {}
    for key, raw in RE_CONTROLNET_ITEM.findall(text):
        key, value = key.strip().lower(), raw.strip()
        if key in CONTROLNET_ITEM_FIELDS:
            unit[CONTROLNET_ITEM_FIELDS[key]] = value
        elif key == "resize mode":
            labels = [label.lower() for label in CONTROLNET_RESIZE_LABELS]
            if value.lower() in labels:
                unit["resize_mode"] = str(labels.index(value.lower()))
        elif key == "control mode":
            modes = {label.lower(): mode for mode, label in CONTROLNET_MODE_LABELS.items()}
            if value.lower() in modes:
                unit["control_mode"] = modes[value.lower()]
        elif key == "starting/ending":  # older versions: "(0, 1)"
            parts = value.strip("()").split(",")
            if len(parts) == 2:
                unit["guidance_start"], unit["guidance_end"] = (p.strip() for p in parts)
        elif key == "preprocessor params":  # older versions: "(512, 100, 200)"
            parts = [p.strip() for p in value.strip("()").split(",")]
            if len(parts) == 3:
                names = ("processor_res", "threshold_a", "threshold_b")
                unit.update(zip(names, parts, strict=True))
    return unit


def parse_controlnet_units(parsed: Mapping[str, str]) -> list[dict[str, str]]:
    """The units of a parsed infotext ("ControlNet 0", "ControlNet 1", ...), in order."""
    found = []
    for key, value in parsed.items():
        match = RE_CONTROLNET_KEY.match(key)
        if match:
            found.append((int(match.group(1) or 0), parse_controlnet_unit(value)))
    return [unit for _index, unit in sorted(found, key=lambda item: item[0]) if unit]


def quote(value: object) -> str:
    text = str(value)
    if "," not in text and "\n" not in text and ":" not in text:
        return text
    return json.dumps(text, ensure_ascii=False)


def unquote(text: str) -> str:
    if len(text) == 0 or text[0] != '"' or text[-1] != '"':
        return text
    try:
        return json.loads(text)
    except ValueError:
        return text


def format_number(value: object) -> str:
    """7.0 -> "7", 0.45 -> "0.45" (A1111 writes floats as Python does; integral CFG as int)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def build_infotext(prompt: str, negative_prompt: str, params: Mapping[str, Any]) -> str:
    """Join the parameters in A1111's key order: core keys, then extras, then Version, User."""
    ordered: list[tuple[str, Any]] = [(k, params[k]) for k in CORE_KEY_ORDER if k in params]
    ordered += [
        (k, v) for k, v in params.items() if k not in CORE_KEY_ORDER and k not in TRAILING_KEYS
    ]
    ordered += [(k, params[k]) for k in TRAILING_KEYS if k in params]
    line = ", ".join(
        f"{k}: {quote(format_number(v))}" if k != "Size" else f"{k}: {v}"
        for k, v in ordered
        if v is not None
    )
    negative = f"\nNegative prompt: {negative_prompt}" if negative_prompt else ""
    return f"{prompt}{negative}\n{line}"


def parse_infotext(text: str) -> dict[str, str]:
    """A1111's parse_generation_parameters: values stay strings; Size splits into Size-1/-2.

    Older images (before v1.9) carry combined names ("DPM++ 2M Karras") and no Schedule type:
    the trailing schedule label is split off into "Schedule type".
    """
    result: dict[str, str] = {}
    prompt, negative, done_with_prompt = "", "", False
    *lines, lastline = text.strip().split("\n")
    if len(RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    result["Prompt"] = prompt
    result["Negative prompt"] = negative
    for key, value in RE_PARAM.findall(lastline):
        value = unquote(value.strip())
        match = RE_IMAGESIZE.match(value)
        if match is not None:
            result[f"{key}-1"] = match.group(1)
            result[f"{key}-2"] = match.group(2)
        else:
            result[key] = value
    result.setdefault("Clip skip", "1")
    if "Sampler" in result and "Schedule type" not in result:
        from gpu_worker.samplers import split_legacy_sampler

        sampler, schedule = split_legacy_sampler(result["Sampler"])
        result["Sampler"] = sampler
        if schedule:
            result["Schedule type"] = schedule
    return result


def infotext_to_fields(parsed: Mapping[str, str]) -> dict[str, Any]:
    """Typed request fields (GenerationRequest names) from a parsed infotext, where present."""
    fields: dict[str, Any] = {"prompt": parsed.get("Prompt", "")}
    fields["negative_prompt"] = parsed.get("Negative prompt", "")
    conversions: list[tuple[str, str, Any]] = [
        ("Steps", "steps", int),
        ("Sampler", "sampler", str),
        ("Schedule type", "scheduler", str),
        ("CFG scale", "cfg_scale", float),
        ("Seed", "seed", int),
        ("Size-1", "width", int),
        ("Size-2", "height", int),
        ("Model", "checkpoint", str),
        ("Clip skip", "clip_skip", int),
        ("Denoising strength", "denoising_strength", float),
        ("VAE", "vae", str),
        ("Variation seed", "subseed", int),
        ("Variation seed strength", "subseed_strength", float),
        ("Seed resize from-1", "seed_resize_from_w", int),
        ("Seed resize from-2", "seed_resize_from_h", int),
    ]
    for key, name, convert in conversions:
        if key in parsed:
            try:
                fields[name] = convert(parsed[key])
            except ValueError:
                continue
    if parsed.get("Tiling") == "True":
        fields["tiling"] = True
    if parsed.get("Face restoration"):  # A1111 names the model ("GFPGAN", "CodeFormer")
        fields["restore_faces"] = True
    return fields


def png_with_infotext(image: Image.Image, infotext: str) -> bytes:
    info = PngImagePlugin.PngInfo()
    info.add_text(PNG_CHUNK, infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def read_infotext(data: bytes) -> str | None:
    """The `parameters` text of a PNG (or A1111's EXIF UserComment of a JPEG/WEBP), if any."""
    with Image.open(io.BytesIO(data)) as image:
        text = image.info.get(PNG_CHUNK)
        if isinstance(text, str):
            return text
        exif = image.getexif().get_ifd(0x8769).get(0x9286)  # UserComment
        if isinstance(exif, bytes) and exif.startswith(b"UNICODE\0"):
            return exif[8:].decode("utf-16-be", errors="replace")
        if isinstance(exif, str):
            return exif
    return None
