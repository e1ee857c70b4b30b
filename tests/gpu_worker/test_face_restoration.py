"""Our GFPGAN loader against the published GFPGANv1.4 layout (key names and shapes as the released
file has them, written out here from that layout), the demo model's round trip, what is refused,
and face restoration in Extras and in txt2img (`restore_faces`) on the real engine."""

from __future__ import annotations

import base64
import io
from typing import Any

import pytest
from PIL import Image

from gpu_worker.face_licences import CODEFORMER, GFPGAN, architecture_of, parse_allowed, refusal
from tests.gpu_worker.test_extras import extras, extras_request

pytestmark = pytest.mark.engine


def gfpgan_v14_shapes() -> dict[str, tuple[int, ...]]:
    """GFPGANv1.4.pth (`params_ema`): 512 px, style 512, channel multiplier 2, narrow 1, SFT on
    half the channels, one style code per decoder layer, 8 MLP layers."""
    decoder = {4: 512, 8: 512, 16: 512, 32: 512, 64: 512, 128: 256, 256: 128, 512: 64}
    unet = {res: ch // 2 for res, ch in decoder.items()}
    shapes: dict[str, tuple[int, ...]] = {}

    def conv(name: str, cin: int, cout: int, k: int = 3, bias: bool = True) -> None:
        shapes[f"{name}.weight"] = (cout, cin, k, k)
        if bias:
            shapes[f"{name}.bias"] = (cout,)

    def res_block(name: str, cin: int, cout: int) -> None:
        conv(f"{name}.conv1", cin, cin)
        conv(f"{name}.conv2", cin, cout)
        conv(f"{name}.skip", cin, cout, 1, bias=False)

    conv("conv_body_first", 3, unet[512], 1)
    for k, level in enumerate(range(9, 2, -1)):
        res_block(f"conv_body_down.{k}", unet[2**level], unet[2 ** (level - 1)])
    conv("final_conv", unet[4], unet[4])
    for k, level in enumerate(range(3, 10)):
        res_block(f"conv_body_up.{k}", unet[2 ** (level - 1)], unet[2**level])
        conv(f"toRGB.{k}", unet[2**level], 3, 1)
        for branch in ("condition_scale", "condition_shift"):
            conv(f"{branch}.{k}.0", unet[2**level], unet[2**level])
            conv(f"{branch}.{k}.2", unet[2**level], unet[2**level])
    shapes["final_linear.weight"] = (16 * 512, unet[4] * 16)
    shapes["final_linear.bias"] = (16 * 512,)
    d = "stylegan_decoder"
    for i in range(8):
        shapes[f"{d}.style_mlp.{2 * i + 1}.weight"] = (512, 512)
        shapes[f"{d}.style_mlp.{2 * i + 1}.bias"] = (512,)
    shapes[f"{d}.constant_input.weight"] = (1, 512, 4, 4)

    def style_conv(name: str, cin: int, cout: int) -> None:
        shapes[f"{name}.modulated_conv.weight"] = (1, cout, cin, 3, 3)
        shapes[f"{name}.modulated_conv.modulation.weight"] = (cin, 512)
        shapes[f"{name}.modulated_conv.modulation.bias"] = (cin,)
        shapes[f"{name}.weight"] = (1,)
        shapes[f"{name}.bias"] = (1, cout, 1, 1)

    def to_rgb(name: str, cin: int) -> None:
        shapes[f"{name}.modulated_conv.weight"] = (1, 3, cin, 1, 1)
        shapes[f"{name}.modulated_conv.modulation.weight"] = (cin, 512)
        shapes[f"{name}.modulated_conv.modulation.bias"] = (cin,)
        shapes[f"{name}.bias"] = (1, 3, 1, 1)

    style_conv(f"{d}.style_conv1", 512, 512)
    to_rgb(f"{d}.to_rgb1", 512)
    previous = 512
    for k, level in enumerate(range(3, 10)):
        out = decoder[2**level]
        style_conv(f"{d}.style_convs.{2 * k}", previous, out)
        style_conv(f"{d}.style_convs.{2 * k + 1}", out, out)
        to_rgb(f"{d}.to_rgbs.{k}", out)
        previous = out
    for i in range(15):
        side = 2 ** ((i + 5) // 2)
        shapes[f"{d}.noises.noise{i}"] = (1, 1, side, side)
    return shapes


def test_the_published_gfpgan_v14_layout_is_built_exactly(torch: Any):
    from gpu_worker.gfpgan_arch import GfpganClean, GfpganConfig

    expected = gfpgan_v14_shapes()
    with torch.device("meta"):  # shapes only: the real model is 340 MB of weights
        config = GfpganConfig.from_state({k: torch.empty(s) for k, s in expected.items()})
        model = GfpganClean(config)
    assert (config.size, config.style, config.different_w, config.sft_half) == (
        512,
        512,
        True,
        True,
    )
    built = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    assert built == expected
    assert architecture_of(expected) == GFPGAN


def test_the_demo_gfpgan_round_trips_and_restores_at_its_visibility(engine: Any, torch: Any):
    from gpu_worker.face_restoration import restore

    model = engine.face_restorer(engine.resolve("face_restorer", "atelier-demo-gfpgan"))
    assert model.config.size == 32
    image = Image.effect_noise((48, 40), 40).convert("RGB")
    assert restore(model, image, 0.0) is image
    full = restore(model, image, 1.0)
    assert full.size == image.size and full.tobytes() != image.tobytes()
    half = restore(model, image, 0.5)
    assert half.tobytes() == Image.blend(image, full, 0.5).tobytes()
    assert restore(model, image, 1.0).tobytes() == full.tobytes()  # fixed noise: repeatable


def test_other_architectures_and_pickles_are_refused_naming_them(torch: Any, tmp_path):
    from gpu_worker.face_restoration import (
        FaceModelError,
        build_face_restorer,
        load_face_restorer,
    )

    codeformer = {"quantize.embedding.weight": torch.zeros(4, 4), "position_emb": torch.zeros(4)}
    with pytest.raises(FaceModelError, match="CodeFormer"):
        build_face_restorer(codeformer)
    pickle = tmp_path / "GFPGANv1.4.pth"
    pickle.write_bytes(b"\x80\x04")
    with pytest.raises(FaceModelError, match="GFPGANv1.4.pth: a pickle"):
        load_face_restorer(pickle)


def test_the_licence_gate_enables_codeformer_only_by_its_licence_name():
    assert refusal(GFPGAN, {}) is None
    reason = refusal(CODEFORMER, {})
    assert reason and "S-Lab-1.0" in reason and "ATELIER_ALLOW_NONCOMMERCIAL_MODELS" in reason
    assert refusal(CODEFORMER, parse_allowed("codeformer:S-Lab-1.0")) is None
    assert refusal(CODEFORMER, parse_allowed("codeformer:MIT")) is not None  # the wrong licence


def test_extras_restores_faces_after_the_upscale_and_says_so(engine: Any, torch: Any):
    plain = extras(scale=2)
    request = extras_request(plain)
    restored = extras(scale=2, gfpgan_visibility=1.0, face_restorer="atelier-demo-gfpgan")
    faced = {**request, "extras": restored}
    before = engine.run(request).images[0]
    after = engine.run(faced).images[0]
    assert after["infotext"].endswith("GFPGAN visibility: 1")
    assert (after["width"], after["height"]) == (128, 192)
    assert after["png_b64"] != before["png_b64"]


def test_restore_faces_on_txt2img_changes_the_image_and_its_infotext(engine: Any, torch: Any):
    from tests.gpu_worker.conftest import demo_request

    plain = engine.run(demo_request(seed=7)).images[0]
    faced = engine.run(
        demo_request(seed=7, restore_faces=True, face_restorer="atelier-demo-gfpgan")
    ).images[0]
    assert "Face restoration: GFPGAN" in faced["infotext"]
    assert "Face restoration" not in plain["infotext"]
    pixels = [
        Image.open(io.BytesIO(base64.b64decode(i["png_b64"]))).tobytes() for i in (plain, faced)
    ]
    assert pixels[0] != pixels[1]


def test_a_detected_face_is_aligned_to_the_template_and_pasted_back_only_there():
    import cv2
    import numpy as np

    from gpu_worker.face_detection import FFHQ_512, alignment, crop_face, paste_face

    image = Image.new("RGB", (200, 160), (10, 200, 30))
    offset = np.array([68, 40], dtype=np.float32)
    landmarks = FFHQ_512 * 0.125 + offset  # a 64 px face, as a detector reports
    matrix = alignment(landmarks, 32)
    mapped = cv2.transform(landmarks[None], matrix)[0]
    assert np.allclose(mapped, FFHQ_512 / 16, atol=0.05)  # onto the 32 px template
    assert crop_face(image, matrix, 32).getpixel((16, 16)) == (10, 200, 30)
    red = Image.new("RGB", (32, 32), (255, 0, 0))
    nose = (int(landmarks[2][0]), int(landmarks[2][1]))
    pasted = paste_face(image, red, matrix, 1.0)
    assert pasted.getpixel(nose) == (255, 0, 0)
    assert pasted.getpixel((5, 5)) == pasted.getpixel((195, 155)) == (10, 200, 30)
    half = paste_face(image, red, matrix, 0.5).getpixel(nose)
    assert isinstance(half, tuple)
    assert abs(half[0] - (255 + 10) / 2) <= 1 and abs(half[1] - 100) <= 1


def test_without_a_detector_file_the_whole_image_is_restored(engine: Any, tmp_path):
    from gpu_worker.face_detection import find_detector

    assert find_detector(tmp_path) is None
    (tmp_path / "FaceDetection").mkdir()
    (tmp_path / "FaceDetection" / "yunet.onnx").write_bytes(b"")
    assert find_detector(tmp_path) == tmp_path / "FaceDetection" / "yunet.onnx"
    assert engine.face_detector() is None  # the demo models folder has none
