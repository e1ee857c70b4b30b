"""Variation seeds (A1111's slerp of seed and subseed noise, seed resize) and tiling on the demo
engine."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from PIL import Image

from gpu_worker.infotext import infotext_to_fields, parse_infotext

from .conftest import demo_request


def array(result_image: dict) -> np.ndarray:
    image = Image.open(io.BytesIO(base64.b64decode(result_image["png_b64"])))
    return np.asarray(image.convert("RGB"), dtype=np.float64)


def run(engine: Any, **overrides: Any) -> Any:
    return engine.run(demo_request(**{"sampler": "Euler a", "steps": 4, "seed": 21, **overrides}))


def test_without_strength_the_noise_is_the_seeds_own(torch: Any) -> None:
    from gpu_worker.noise import Variation, initial_noise

    plain = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(5))
    assert torch.equal(initial_noise([5], Variation(9, 0.0, None), (4, 8, 8)), plain)
    full = initial_noise([5], Variation(9, 1.0, None), (4, 8, 8))
    sub = torch.randn((1, 4, 8, 8), generator=torch.Generator("cpu").manual_seed(9))
    assert torch.allclose(full, sub, atol=1e-5)  # strength 1: the subseed's noise


def test_a_resized_seed_keeps_its_noise_in_the_middle(torch: Any) -> None:
    from gpu_worker.noise import Variation, initial_noise

    small = torch.randn((4, 8, 8), generator=torch.Generator("cpu").manual_seed(5))
    big = initial_noise([5], Variation(0, 0.0, (64, 64)), (4, 12, 16))[0]
    assert torch.equal(big[:, 2:10, 4:12], small)
    cropped = initial_noise([5], Variation(0, 0.0, (64, 64)), (4, 4, 4))[0]
    assert torch.equal(cropped, small[:, 2:6, 2:6])


def test_same_seed_and_subseed_reproduce_and_another_subseed_changes_the_image(
    engine: Any,
) -> None:
    first = run(engine, subseed=100, subseed_strength=0.4).images[0]
    again = run(engine, subseed=100, subseed_strength=0.4).images[0]
    other = run(engine, subseed=101, subseed_strength=0.4).images[0]
    plain = run(engine, subseed=100, subseed_strength=0.0).images[0]
    assert np.array_equal(array(first), array(again))
    assert not np.array_equal(array(first), array(other))
    assert not np.array_equal(array(first), array(plain))
    assert np.array_equal(array(plain), array(run(engine).images[0]))  # strength 0: no change
    fields = infotext_to_fields(parse_infotext(first["infotext"]))
    assert fields["subseed"] == 100 and fields["subseed_strength"] == 0.4
    assert "Variation seed: 100, Variation seed strength: 0.4" in first["infotext"]
    assert "Variation seed" not in plain["infotext"]


def test_each_image_of_a_batch_uses_its_own_subseed(engine: Any) -> None:
    batch = run(engine, subseed=100, subseed_strength=0.4, batch_size=2).images
    assert "Variation seed: 101," in batch[1]["infotext"]
    single = run(engine, seed=22, subseed=101, subseed_strength=0.4).images[0]
    assert np.abs(array(batch[1]) - array(single)).max() <= 2  # batched math may round


def test_seed_resize_runs_and_is_written_in_the_infotext(engine: Any) -> None:
    image = run(engine, width=96, seed_resize_from_w=64, seed_resize_from_h=64).images[0]
    assert (image["width"], image["height"]) == (96, 64)
    assert "Seed resize from: 64x64" in image["infotext"]


def seam(image: np.ndarray) -> float:
    """How much the wrap-around seam (last column to first, last row to first) jumps, against
    the image's ordinary neighbour-to-neighbour jumps."""
    inner = np.abs(np.diff(image, axis=1)).mean() + np.abs(np.diff(image, axis=0)).mean()
    wrap = np.abs(image[:, 0] - image[:, -1]).mean() + np.abs(image[0] - image[-1]).mean()
    return float(wrap / inner)


def test_tiling_makes_the_left_edge_continue_the_right_edge(engine: Any) -> None:
    seams = {
        tiling: [seam(array(run(engine, seed=s, tiling=tiling).images[0])) for s in range(3)]
        for tiling in (False, True)
    }
    assert sum(seams[True]) < sum(seams[False])
    tiled = run(engine, tiling=True).images[0]
    assert "Tiling: True" in tiled["infotext"]
    assert infotext_to_fields(parse_infotext(tiled["infotext"]))["tiling"] is True
    # the shared pipeline is back to zero padding for the next job
    assert np.array_equal(array(run(engine).images[0]), array(run(engine).images[0]))
