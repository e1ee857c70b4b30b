"""sd-webui-controlnet's model-free preprocessors as a member sees their maps: small images in,
the extension's map shapes and values out (gpu_worker/model_free_maps.py through
preprocessors.run_preprocessor). The maps were compared bit for bit with the extension's own
functions on the same inputs when written; these tests hold the behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gpu_worker.preprocessors import (
    BUILT_IN,
    MODULE_DETAIL,
    run_preprocessor,
    shuffle_seed,
    threshold_default,
    threshold_problem,
)

MODEL_FREE = (
    "tile_resample",
    "invert",
    "threshold",
    "blur_gaussian",
    "lineart_standard",
    "scribble_xdog",
    "color",
    "shuffle",
    "recolor_luminance",
    "recolor_intensity",
)


def drawing(size: tuple[int, int] = (96, 64)) -> Image.Image:
    """Black lines on white, as a scanned sketch."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.line((4, 4, size[0] - 4, size[1] - 4), fill="black", width=3)
    draw.ellipse((20, 10, 60, 50), outline="black", width=2)
    return image


def photo(size: tuple[int, int] = (96, 64), seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = Image.fromarray(rng.integers(0, 256, (8, 12, 3), dtype=np.uint8))
    return small.resize(size, Image.Resampling.BICUBIC)


def pixels(
    module: str, image: Image.Image, res: int = 64, a: float | None = None, **kw
) -> np.ndarray:
    a = threshold_default(module, "threshold_a") if a is None else a
    b = threshold_default(module, "threshold_b")
    return np.asarray(run_preprocessor(module, image, res, a, b, **kw))


def test_every_model_free_module_is_built_in_and_makes_an_rgb_map():
    for module in MODEL_FREE:
        assert module in BUILT_IN and module in MODULE_DETAIL
        made = pixels(module, photo(), seed=1)
        assert made.dtype == np.uint8 and made.ndim == 3 and made.shape[2] == 3, module


def test_module_detail_has_the_extensions_slider_names_defaults_and_ranges():
    assert MODULE_DETAIL["tile_resample"]["sliders"] == [
        None,
        {"name": "Down Sampling Rate", "value": 1.0, "min": 1.0, "max": 8.0, "step": 0.01},
    ]
    assert MODULE_DETAIL["threshold"]["sliders"][1] == {
        "name": "Binarization Threshold",
        "value": 127,
        "min": 0,
        "max": 255,
    }
    assert MODULE_DETAIL["blur_gaussian"]["sliders"][1]["name"] == "Sigma"
    assert MODULE_DETAIL["scribble_xdog"]["sliders"][1]["max"] == 64
    assert MODULE_DETAIL["color"]["sliders"][0]["name"] == "Preprocessor Resolution"
    gamma = MODULE_DETAIL["recolor_luminance"]["sliders"][1]
    assert (gamma["name"], gamma["min"], gamma["max"]) == ("Gamma Correction", 0.1, 2.0)
    for bare in ("invert", "lineart_standard", "shuffle"):
        assert MODULE_DETAIL[bare]["sliders"] == []


def test_a_slider_value_outside_its_range_is_named_with_the_range():
    assert threshold_problem("tile_resample", "threshold_a", 4.0) is None
    problem = threshold_problem("tile_resample", "threshold_a", 9.0)
    assert problem is not None and "Down Sampling Rate" in problem and "between 1 and 8" in problem
    assert "between 0.1 and 2" in (threshold_problem("recolor_intensity", "threshold_a", 3) or "")
    assert threshold_problem("invert", "threshold_a", 100.0) is None  # no slider: ignored


def test_tile_resample_at_rate_4_is_a_quarter_size_map_and_below_1_1_the_image():
    image = photo((96, 64))
    assert pixels("tile_resample", image, a=4.0).shape == (16, 24, 3)
    assert np.array_equal(pixels("tile_resample", image, a=1.0), np.asarray(image))


def test_invert_turns_black_lines_on_white_into_white_on_black():
    image = drawing()
    made = pixels("invert", image)
    assert made.shape[:2] == (64, 96)  # no resize
    assert np.array_equal(made, 255 - np.asarray(image))
    assert made[0, 50].tolist() == [0, 0, 0]  # the background is black now


def test_threshold_gives_only_black_and_white_at_the_processor_resolution():
    made = pixels("threshold", photo(), res=128, a=127)
    assert set(np.unique(made)) <= {0, 255} and made.shape == (128, 192, 3)
    darker = pixels("threshold", photo(), res=128, a=250)
    assert (darker == 255).sum() < (made == 255).sum()


def test_blur_gaussian_smooths_more_with_a_larger_sigma():
    image = drawing()
    little = pixels("blur_gaussian", image, a=1.0).astype(float)
    much = pixels("blur_gaussian", image, a=16.0).astype(float)
    assert much.std() < little.std()


def test_lineart_standard_and_scribble_xdog_draw_white_lines_on_black():
    image = drawing()
    lines = pixels("lineart_standard", image)
    assert lines[0, 50].tolist() == [0, 0, 0] and lines.max() >= 100  # median line: 127
    scribble = pixels("scribble_xdog", image)
    assert set(np.unique(scribble)) <= {0, 255} and (scribble == 255).any()
    assert scribble.mean() < 128  # mostly black background


def test_color_grid_is_one_colour_per_64_pixel_cell():
    made = pixels("color", photo((256, 128)), res=128)
    assert made.shape == (128, 256, 3)
    cell = made[:64, :64].reshape(-1, 3)
    assert (cell == cell[0]).all()


def test_shuffle_with_the_same_seed_gives_the_same_map_and_another_seed_another():
    image = photo()
    first = pixels("shuffle", image, seed=7)
    assert np.array_equal(first, pixels("shuffle", image, seed=7))
    assert not np.array_equal(first, pixels("shuffle", image, seed=8))


def test_the_shuffle_seed_is_the_extensions_seed_plus_subseed():
    assert shuffle_seed(5, 10, 0.5) == 15  # variation on: seed + subseed
    assert shuffle_seed(5, -1) == shuffle_seed(5, 10, 0.0) == 10  # off: the seed counts twice
    assert shuffle_seed(2**32 - 1, 1, 1.0) == 0


@pytest.mark.parametrize("module", ["recolor_luminance", "recolor_intensity"])
def test_recolor_is_grey_and_gamma_darkens_or_lightens_it(module):
    image = photo()
    plain = pixels(module, image, a=1.0)
    assert (plain[..., 0] == plain[..., 1]).all() and (plain[..., 1] == plain[..., 2]).all()
    assert pixels(module, image, a=2.0).mean() < plain.mean() < pixels(module, image, a=0.5).mean()


def test_the_processor_resolution_sets_the_maps_short_side():
    for module in ("threshold", "blur_gaussian", "lineart_standard", "scribble_xdog", "shuffle"):
        assert pixels(module, photo((96, 64)), res=128, seed=1).shape[:2] == (128, 192), module
