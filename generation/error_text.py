"""Submission errors as a person reads them: the field's label, not its key, in the page's language.

The submission service words its errors for API clients and names fields by key
("cfg_scale must be between 1 and 30"). Pages show them through `readable_error`, which
recognises each message the service writes and says it again with the label, translated. A
message it does not recognise keeps its words, with the key swapped for the label.
"""

from __future__ import annotations

import re
from typing import Any

from django.utils.functional import Promise
from django.utils.translation import gettext, gettext_noop
from django.utils.translation import gettext_lazy as _

FIELD_LABELS: dict[str, Promise] = {
    "prompt": _("Prompt"),
    "negative_prompt": _("Negative prompt"),
    "checkpoint": _("Model"),
    "vae": _("VAE"),
    "sampler": _("Sampler"),
    "scheduler": _("Schedule type"),
    "steps": _("Sampling steps"),
    "cfg_scale": _("CFG scale"),
    "width": _("Width"),
    "height": _("Height"),
    "seed": _("Seed"),
    "batch_size": _("Batch size"),
    "n_iter": _("Batch count"),
    "clip_skip": _("Clip skip"),
    "init_image": _("Source image"),
    "denoising_strength": _("Denoising strength"),
    "resize_mode": _("Resize mode"),
    "hires": _("Hires. fix"),
    "scale": _("Upscale by"),
    "upscaler": _("Upscaler"),
    "second_pass_steps": _("Hires steps"),
    "hires.resize_x": _("Hires width"),
    "hires.resize_y": _("Hires height"),
    "resize_x": _("Hires width"),
    "resize_y": _("Hires height"),
    "mode": _("Mode"),
    "subseed": _("Variation seed"),
    "subseed_strength": _("Variation strength"),
    "seed_resize_from_w": _("Resize seed from width"),
    "seed_resize_from_h": _("Resize seed from height"),
    "tiling": _("Tiling"),
    "styles": _("Styles"),
    "jobs": _("Jobs"),
    "price": _("Price"),
    "queue": _("Queue"),
    # the checkpoint merger (generation/merges.py)
    "method": _("Method"),
    "primary": _("Model A"),
    "secondary": _("Model B"),
    "tertiary": _("Model C"),
    "multiplier": _("Multiplier (M)"),
    "block_weights": _("Block weights"),
    "preset": _("Preset"),
    "save_as_half": _("Save as float16"),
    "bake_in_vae": _("Bake in VAE"),
    "discard_weights": _("Discard weights (regex)"),
    "name": _("Name"),
}

_KEY = r"[\w.]+"
_NAME = r"'(?P<name>.*)'"
# (message shape, how a person reads it). A wording with %(label)s names the field itself;
# the others are shown after "Label: ".
MESSAGES: list[tuple[re.Pattern[str], str]] = [
    (
        re.compile(rf"^{_KEY} must be an integer$"),
        gettext_noop("%(label)s must be a whole number."),
    ),
    (re.compile(rf"^{_KEY} must be a number$"), gettext_noop("%(label)s must be a number.")),
    (
        re.compile(rf"^{_KEY} must be between (?P<low>\S+) and (?P<high>[-\d.]+)"),
        gettext_noop("%(label)s must be between %(low)s and %(high)s."),
    ),
    (re.compile(rf"^{_KEY} must be text$"), gettext_noop("%(label)s must be text.")),
    (
        re.compile(rf"^{_KEY} is (?P<count>\d+) characters; the limit is (?P<limit>\d+)$"),
        gettext_noop("%(label)s is %(count)s characters long; the limit is %(limit)s."),
    ),
    (
        re.compile(rf"^{_KEY} must be a multiple of 8 \(got (?P<value>-?\d+)\)$"),
        gettext_noop("%(label)s must be a multiple of 8 (it is %(value)s)."),
    ),
    (
        re.compile(r"^hires \w+ must be a multiple of 8$"),
        gettext_noop("%(label)s must be a multiple of 8."),
    ),
    (
        re.compile(rf"^your membership tier does not include the (model|LoRA|VAE) {_NAME}$"),
        gettext_noop("Your membership tier does not include “%(name)s”."),
    ),
    (re.compile(rf"^unknown model {_NAME}$"), gettext_noop("There is no model called “%(name)s”.")),
    (re.compile(rf"^unknown LoRA {_NAME}$"), gettext_noop("There is no LoRA called “%(name)s”.")),
    (re.compile(rf"^unknown VAE {_NAME}$"), gettext_noop("There is no VAE called “%(name)s”.")),
    (
        re.compile(rf"^(model|LoRA|VAE) {_NAME} is not available on any worker now$"),
        gettext_noop("“%(name)s” is not available on any worker right now."),
    ),
    (
        re.compile(r"^no model is available: ask an admin to add one$"),
        gettext_noop("No model is available yet: ask an admin to add one."),
    ),
    (
        re.compile(r"^(?P<w>\d+)x(?P<h>\d+) is more than the limit of (?P<limit>\d+) pixels$"),
        gettext_noop("%(w)s×%(h)s is more than your limit of %(limit)s pixels."),
    ),
    (
        re.compile(r"^batch_size x n_iter is (?P<images>\d+); the limit is (?P<limit>\d+)$"),
        gettext_noop(
            "Batch size × batch count is %(images)s; your limit is %(limit)s images per job."
        ),
    ),
    (
        re.compile(
            r"^you have (?P<count>\d+) unfinished jobs; the limit is (?P<limit>\d+)"
            r": wait for one to finish$"
        ),
        gettext_noop(
            "You have %(count)s unfinished jobs; your limit is %(limit)s. Wait for one to finish."
        ),
    ),
    (
        re.compile(
            r"^the hires target (?P<w>\d+)x(?P<h>\d+) exceeds the limit of (?P<side>\d+) per "
            r"side and (?P<pixels>\d+) pixels$"
        ),
        gettext_noop(
            "The upscaled size %(w)s×%(h)s exceeds your limit of %(side)s per side and "
            "%(pixels)s pixels."
        ),
    ),
    (
        re.compile(r"^unknown sampler '(?P<name>.*?)'; valid samplers: .*$"),
        gettext_noop("There is no sampler called “%(name)s”."),
    ),
    (
        re.compile(r"^sampler '(?P<name>.*?)' is not supported by this engine"),
        gettext_noop("The sampler “%(name)s” is not supported here."),
    ),
    (
        re.compile(r"^unknown or unsupported schedule type '(?P<name>.*?)'; valid: .*$"),
        gettext_noop("“%(name)s” is not a schedule type this platform runs."),
    ),
    (
        re.compile(r"^img2img needs an init_image$"),
        gettext_noop("Image to image needs a source image."),
    ),
    (
        re.compile(r"^init_image is larger than (?P<limit>\d+) bytes$"),
        gettext_noop("The source image is larger than %(limit)s bytes."),
    ),
    (
        re.compile(r"^init_image must be PNG, JPEG or WEBP, not (?P<format>.*)$"),
        gettext_noop("The source image must be PNG, JPEG or WEBP, not %(format)s."),
    ),
    (
        re.compile(r"^init_image (is not a readable image|is not valid base64|must be an image)"),
        gettext_noop("The source image could not be read."),
    ),
    (
        re.compile(
            r"^init_image (is \d+x\d+|has too many pixels); the limit is (?P<limit>\d+) pixels$"
        ),
        gettext_noop("The source image has more than %(limit)s pixels."),
    ),
]


# A ControlNet unit's fields: "controlnet[0].model" -> "ControlNet unit 0: Model".
CONTROLNET_FIELD = re.compile(r"^controlnet\[(?P<index>\d+)\]\.(?P<name>\w+)$")
CONTROLNET_LABELS: dict[str, Promise] = {
    "image": _("Control image"),
    "module": _("Preprocessor"),
    "model": _("Model"),
    "weight": _("Control weight"),
    "guidance_start": _("Starting control step"),
    "guidance_end": _("Ending control step"),
    "control_mode": _("Control mode"),
    "resize_mode": _("Resize mode"),
    "pixel_perfect": _("Pixel perfect"),
    "processor_res": _("Processor resolution"),
    # what each threshold sets depends on the module (canny: low and high threshold)
    "threshold_a": _("Threshold A"),
    "threshold_b": _("Threshold B"),
}


def field_label(field: str) -> str:
    if match := CONTROLNET_FIELD.match(field):
        name = match["name"]
        return gettext("ControlNet unit %(index)s: %(field)s") % {
            "index": match["index"],
            "field": CONTROLNET_LABELS.get(name, name),
        }
    return str(FIELD_LABELS.get(field, field))


def readable_error(field: str, message: str) -> str:
    """One line for a person: "CFG scale must be between 1 and 30." in the active language."""
    label = field_label(field)
    for pattern, wording in MESSAGES:
        if match := pattern.search(message):
            values: dict[str, Any] = {"label": label, **match.groupdict()}
            text = gettext(wording) % values
            return text if "%(label)s" in wording else f"{label}: {text}"
    if message.startswith(f"{field} "):
        return f"{label} {message[len(field) + 1 :]}"
    return f"{label}: {message[:1].upper()}{message[1:]}"
