"""Infotexts: ours parse back to the job's parameters; A1111's current and legacy formats parse;
PNG Info reads any PNG and refuses what it should."""

from __future__ import annotations

import html
import io
import re
import struct
import zlib
from urllib.parse import parse_qsl, urlencode, urlsplit

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse
from PIL import Image

from gallery.png_info import MAX_UPLOAD_BYTES
from gpu_worker.infotext import infotext_to_fields, parse_infotext, png_with_infotext
from tests.gallery.factories import make_checkpoint, make_image

A1111_CURRENT = (
    "masterpiece, 1girl, (red scarf:1.2), <lora:foxStyle:0.8>\n"
    "snowy street at dusk\n"
    "Negative prompt: lowres, bad anatomy\n"
    "Steps: 28, Sampler: DPM++ 2M, Schedule type: Karras, CFG scale: 7, Seed: 3735928559, "
    "Size: 832x1216, Model hash: 6ce0161689, Model: v1-5-pruned-emaonly, "
    "Denoising strength: 0.45, Clip skip: 2, Hires upscale: 1.5, Hires steps: 12, "
    'Hires upscaler: Latent, Lora hashes: "foxStyle: 0123456789ab", Version: v1.10.1'
)
A1111_LEGACY = (
    "a cozy cabin in the snow, night\n"
    "Negative prompt: (worst quality:1.4)\n"
    "Steps: 20, Sampler: DPM++ SDE Karras, CFG scale: 7.0, Seed: 42, Size: 512x512, "
    "Model hash: e4a30e4607, Model: majicmixRealistic_v6, Version: v1.6.0"
)


def _png(infotext: str | None = None, size=(8, 8)) -> bytes:
    picture = Image.new("RGB", size, "orange")
    if infotext is not None:
        return png_with_infotext(picture, infotext)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def _upload(client, data: bytes, name: str = "image.png"):
    return client.post(
        reverse("gallery:png_info"),
        {"image": SimpleUploadedFile(name, data, content_type="image/png")},
    )


def _send_to_generator_fields(response) -> dict[str, str]:
    match = re.search(r'href="([^"]+)">Send to generator', response.content.decode())
    assert match, "no Send to generator link"
    return dict(parse_qsl(urlsplit(html.unescape(match.group(1))).query, keep_blank_values=True))


# --- parsing, through gpu_worker.infotext ---------------------------------------------------


def test_the_infotext_we_write_parses_back_to_the_same_parameters(alice):
    image = make_image(alice)
    params = image.job.params
    fields = infotext_to_fields(parse_infotext(image.infotext))
    assert fields == {
        "prompt": params["prompt"],
        "negative_prompt": params["negative_prompt"],
        "steps": params["steps"],
        "sampler": params["sampler"],
        "scheduler": params["scheduler"],
        "cfg_scale": params["cfg_scale"],
        "seed": image.seed,
        "width": params["width"],
        "height": params["height"],
        "checkpoint": params["checkpoint"],
        "clip_skip": params["clip_skip"],
    }


def test_a_current_a1111_infotext_parses():
    parsed = parse_infotext(A1111_CURRENT)
    assert (
        parsed["Prompt"] == "masterpiece, 1girl, (red scarf:1.2), <lora:foxStyle:0.8>\n"
        "snowy street at dusk"
    )
    assert parsed["Negative prompt"] == "lowres, bad anatomy"
    assert (parsed["Sampler"], parsed["Schedule type"]) == ("DPM++ 2M", "Karras")
    assert (parsed["Size-1"], parsed["Size-2"]) == ("832", "1216")
    assert parsed["Lora hashes"] == "foxStyle: 0123456789ab"
    fields = infotext_to_fields(parsed)
    assert (fields["seed"], fields["cfg_scale"], fields["clip_skip"]) == (3735928559, 7.0, 2)


def test_a_legacy_a1111_infotext_with_a_combined_sampler_name_parses():
    fields = infotext_to_fields(parse_infotext(A1111_LEGACY))
    assert (fields["sampler"], fields["scheduler"]) == ("DPM++ SDE", "Karras")
    assert (fields["cfg_scale"], fields["steps"], fields["seed"]) == (7.0, 20, 42)
    assert fields["negative_prompt"] == "(worst quality:1.4)"


# --- the PNG Info page --------------------------------------------------------------------


def test_alice_reads_the_parameters_of_one_of_our_images(alice, client_for):
    image = make_image(alice)
    response = _upload(client_for(alice), image.file.open("rb").read())
    page = response.content.decode()
    assert response.status_code == 200
    assert "a watercolor fox in a misty forest" in page and "DPM++ 2M" in page
    fields = _send_to_generator_fields(response)
    assert (fields["seed"], fields["checkpoint"], fields["clip_skip"]) == (
        str(image.seed),
        "dreamshaper-8",
        "2",
    )


def test_a_current_a1111_png_goes_to_the_generator_with_its_hires_fix(alice, client_for):
    response = _upload(client_for(alice), _png(A1111_CURRENT))
    fields = _send_to_generator_fields(response)
    assert fields["prompt"].endswith("snowy street at dusk")
    assert (fields["width"], fields["height"], fields["seed"]) == ("832", "1216", "3735928559")
    assert (
        fields["hires_enabled"],
        fields["hires_scale"],
        fields["hires_second_pass_steps"],
        fields["hires_denoising_strength"],
    ) == ("on", "1.5", "12", "0.45")
    assert "checkpoint" not in fields  # no such model here
    assert "is not available to you" in response.content.decode()


def test_a_legacy_png_selects_our_copy_of_its_model_by_hash(alice, client_for):
    make_checkpoint("majicmix-realistic-6", short_hash="e4a30e4607")
    fields = _send_to_generator_fields(_upload(client_for(alice), _png(A1111_LEGACY)))
    assert (fields["checkpoint"], fields["sampler"], fields["scheduler"]) == (
        "majicmix-realistic-6",
        "DPM++ SDE",
        "Karras",
    )


def test_a_jpeg_is_refused_with_a_clear_error(alice, client_for):
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    response = _upload(client_for(alice), buffer.getvalue(), "photo.png")
    assert response.status_code == 400
    assert "This is not a PNG file" in response.content.decode()


def test_a_text_file_is_refused_with_a_clear_error(alice, client_for):
    response = _upload(client_for(alice), b"hello", "notes.png")
    assert response.status_code == 400
    assert "This is not a PNG file" in response.content.decode()


def test_a_file_over_20_mb_is_refused(alice, client_for):
    data = _png(A1111_LEGACY) + b"\0" * MAX_UPLOAD_BYTES
    response = _upload(client_for(alice), data)
    assert response.status_code == 400
    assert "the limit is 20 MB" in response.content.decode()


def test_a_png_without_parameters_says_so(alice, client_for):
    response = _upload(client_for(alice), _png())
    assert response.status_code == 400
    assert "This PNG carries no generation parameters." in response.content.decode()


def _png_claiming_size(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims a huge image: a decompression bomb's shape."""
    data = _png(A1111_LEGACY)
    ihdr = struct.pack(">II", width, height) + data[24:29]
    chunk = b"IHDR" + ihdr
    return data[:12] + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("side", [10_000, 30_000])
def test_a_png_claiming_a_huge_size_is_refused(side, alice, client_for):
    response = _upload(client_for(alice), _png_claiming_size(side, side))
    assert response.status_code == 400
    assert "too large" in response.content.decode()


def test_pillows_decompression_bomb_limit_is_set():
    assert Image.MAX_IMAGE_PIXELS == 8192 * 8192


def test_anonymous_visitors_are_sent_to_log_in_for_png_info(client_for):
    response = client_for(None).get(reverse("gallery:png_info"))
    assert response.status_code == 302 and "/login/" in response["Location"]


def test_an_a1111_controlnet_unit_goes_to_the_generator_with_its_settings(alice, client_for):
    from generation.models import CatalogEntry

    CatalogEntry.objects.create(
        name="control_v11p_sd15_canny", kind="controlnet", family="sd1", sha256="d14c016b" * 8
    )
    unit = (
        'ControlNet 0: "Module: canny, Model: control_v11p_sd15_canny [d14c016b], Weight: 0.6, '
        "Resize Mode: Just Resize, Low Vram: False, Processor Res: 512, Threshold A: 100, "
        "Threshold B: 200, Guidance Start: 0.0, Guidance End: 0.8, Pixel Perfect: True, "
        'Control Mode: Balanced, Save Detected Map: True"'
    )
    fields = _send_to_generator_fields(_upload(client_for(alice), _png(f"{A1111_LEGACY}, {unit}")))
    assert fields["cn-0-model"] == "control_v11p_sd15_canny [d14c016b]"
    assert (fields["cn-0-weight"], fields["cn-0-guidance_end"]) == ("0.6", "0.8")
    assert (fields["cn-0-resize_mode"], fields["cn-0-pixel_perfect"]) == ("0", "on")
    link = reverse("generate") + "?" + urlencode(fields)
    page = client_for(alice).get(link).content.decode()
    assert 'value="control_v11p_sd15_canny" data-family="sd1" selected' in page
