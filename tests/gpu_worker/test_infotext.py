"""A1111 infotext: layout, quoting, parsing of current and legacy examples, the PNG chunk."""

from __future__ import annotations

import pytest
from PIL import Image

from gpu_worker.infotext import (
    build_infotext,
    infotext_to_fields,
    parse_infotext,
    png_with_infotext,
    read_infotext,
)

CURRENT = (
    "masterpiece, a fox in the snow, (detailed fur:1.2)\n"
    "Negative prompt: blurry, lowres\n"
    "Steps: 20, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 1234567890, "
    "Size: 512x768, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, Denoising strength: 0.45, "
    'Hires upscale: 2, Hires steps: 10, Hires upscaler: Latent, Lora hashes: "foxStyle: '
    '0123456789ab", Version: v1.10.1'
)
LEGACY = (
    "a castle on a hill\n"
    "Steps: 30, Sampler: DPM++ 2M Karras, CFG scale: 7.0, Seed: 42, Size: 512x512, "
    "Model hash: 4c86efd062, Model: model"
)


def test_current_a1111_infotext_parses() -> None:
    parsed = parse_infotext(CURRENT)
    assert parsed["Prompt"] == "masterpiece, a fox in the snow, (detailed fur:1.2)"
    assert parsed["Negative prompt"] == "blurry, lowres"
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras"
    assert (parsed["Size-1"], parsed["Size-2"]) == ("512", "768")
    assert parsed["Lora hashes"] == "foxStyle: 0123456789ab"
    assert parsed["Version"] == "v1.10.1"
    assert parsed["Clip skip"] == "1"


def test_legacy_combined_sampler_name_is_split() -> None:
    parsed = parse_infotext(LEGACY)
    assert parsed["Sampler"] == "DPM++ 2M"
    assert parsed["Schedule type"] == "Karras"
    fields = infotext_to_fields(parsed)
    assert fields["cfg_scale"] == 7.0 and fields["steps"] == 30 and fields["width"] == 512


def test_last_line_needs_three_pairs_to_be_parameters() -> None:
    parsed = parse_infotext("a portrait\nstyle: noir, mood: dark")
    assert parsed["Prompt"] == "a portrait\nstyle: noir, mood: dark"
    assert "style" not in parsed


def test_multiline_prompt_and_negative() -> None:
    text = "line one\nline two\nNegative prompt: bad\nworse\nSteps: 4, Sampler: Euler, Seed: 1"
    parsed = parse_infotext(text)
    assert parsed["Prompt"] == "line one\nline two"
    assert parsed["Negative prompt"] == "bad\nworse"


def test_build_orders_keys_quotes_values_and_omits_empty_negative() -> None:
    text = build_infotext(
        "a cat",
        "",
        {
            "Version": "x",
            "Lora hashes": "a: 1, b: 2",
            "Seed": 5,
            "Steps": 4,
            "CFG scale": 7.0,
            "Size": "64x64",
            "Model": "m",
            "VAE": None,
            "Clip skip": 2,
        },
    )
    assert text == (
        "a cat\nSteps: 4, CFG scale: 7, Seed: 5, Size: 64x64, Model: m, Clip skip: 2, "
        'Lora hashes: "a: 1, b: 2", Version: x'
    )


@pytest.mark.parametrize("prompt", ["simple", "with, commas: and colons", "two\nlines"])
def test_round_trip(prompt: str) -> None:
    params = {
        "Steps": 20,
        "Sampler": "Euler a",
        "Schedule type": "Automatic",
        "CFG scale": 6.5,
        "Seed": 9,
        "Size": "512x512",
        "Model": "x",
    }
    parsed = parse_infotext(build_infotext(prompt, "neg, ative", params))
    assert parsed["Prompt"] == prompt
    assert parsed["Negative prompt"] == "neg, ative"
    assert parsed["CFG scale"] == "6.5" and parsed["Sampler"] == "Euler a"


def test_png_parameters_chunk_round_trip() -> None:
    data = png_with_infotext(Image.new("RGB", (8, 8)), CURRENT)
    assert read_infotext(data) == CURRENT
