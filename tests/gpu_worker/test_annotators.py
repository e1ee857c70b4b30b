"""Weight-based ControlNet annotators (lineart, soft edges, openpose): listed only where their
weights lie in the models folder, run as sd-webui-controlnet runs them, in jobs and previews.
Random weights (small networks in the released key layouts), 64 px."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gpu_worker.engine import JobFailed
from gpu_worker.infotext import parse_infotext
from gpu_worker.preprocessors import ANNOTATOR_WEIGHTS, BUILT_IN, worker_preprocessors

from .conftest import make_engine
from .test_controlnet import pixels, run, unit


def square(size: int = 64) -> Image.Image:
    image = Image.new("RGB", (size, size), "black")
    ImageDraw.Draw(image).rectangle((16, 16, 48, 48), fill="white")
    return image


@pytest.fixture(scope="module")
def lineart_models(tmp_path_factory: pytest.TempPathFactory, demo_models_dir: Path) -> Path:
    """The demo models with random lineart_realistic weights dropped in (no coarse ones)."""
    from gpu_worker.annotators import random_lineart_weights

    models = tmp_path_factory.mktemp("annotated") / "models"
    shutil.copytree(demo_models_dir, models, ignore=shutil.ignore_patterns(".atelier-hashes.json"))
    random_lineart_weights(models / ANNOTATOR_WEIGHTS["lineart_realistic"])
    return models


def test_an_annotator_is_listed_only_where_its_weights_are(tmp_path: Path) -> None:
    assert worker_preprocessors(tmp_path) == list(BUILT_IN)
    weights = tmp_path / ANNOTATOR_WEIGHTS["lineart_coarse"]
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert worker_preprocessors(tmp_path) == [*BUILT_IN, "lineart_coarse"]


def test_lineart_is_the_networks_lines_inverted_at_the_processor_resolution(
    lineart_models: Path, torch: Any
) -> None:
    from safetensors.torch import load_file

    from gpu_worker.annotators import Annotators, LineartGenerator

    annotators = Annotators(lineart_models, torch.device("cpu"))
    made = annotators.control_map("lineart_realistic", square(64), 48, 0, 0)
    assert made.size == (48, 48) and made.mode == "RGB"

    net = LineartGenerator()
    net.load_state_dict(load_file(str(lineart_models / ANNOTATOR_WEIGHTS["lineart_realistic"])))
    x = torch.from_numpy(np.asarray(square(64).resize((48, 48), Image.Resampling.LANCZOS)) / 255.0)
    with torch.inference_mode():
        line = net.eval()(x.permute(2, 0, 1).unsqueeze(0).float())[0, 0]
    expected = 255 - (line * 255).clamp(0, 255).to(torch.uint8).numpy()
    assert np.array_equal(np.asarray(made)[..., 0], expected)
    assert len(set(np.asarray(made).flatten().tolist())) > 2  # a map, not a blank
    # the built-in ones still come from preprocessors.py; absent weights are an error
    assert annotators.control_map("none", square(), 64, 0, 0).tobytes() == square().tobytes()
    with pytest.raises(ValueError, match="lineart_coarse"):
        annotators.control_map("lineart_coarse", square(), 64, 0, 0)


def test_a_job_runs_a_lineart_unit_and_names_it(lineart_models: Path, atelier_cache_dir: Path):
    engine = make_engine(lineart_models, atelier_cache_dir)
    lineart = run(engine, unit(module="lineart_realistic"))
    assert pixels(lineart) != pixels(run(engine, unit()))  # not canny's map
    info = parse_infotext(lineart.images[0]["infotext"])
    assert info["ControlNet 0"].startswith("Module: lineart_realistic, Model: ")
    with pytest.raises(JobFailed, match="lineart_coarse"):
        run(engine, unit(module="lineart_coarse"))  # its weights are not here


HED_TINY = ((1, 4), (1, 4), (2, 4), (1, 8), (1, 8))  # the released layout, fewer channels


def body_tiny() -> Any:
    from gpu_worker.openpose import BodyWidths

    return BodyWidths(vgg=(4, 4, 8, 8), cpm=8, features=8, stage1=8, stage1_wide=8, stage=8)


@pytest.fixture(scope="module")
def edge_and_pose_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models folder with small random HED and body-pose weights in the released layouts."""
    from gpu_worker.hed import random_hed_weights
    from gpu_worker.openpose import random_body_weights

    models = tmp_path_factory.mktemp("edge_pose") / "models"
    random_hed_weights(models / ANNOTATOR_WEIGHTS["softedge_hed"], HED_TINY)
    random_body_weights(models / ANNOTATOR_WEIGHTS["openpose"], body_tiny())
    return models


def test_hed_and_openpose_are_listed_by_their_own_files(tmp_path: Path) -> None:
    for module in ("softedge_hed", "openpose"):
        weights = tmp_path / ANNOTATOR_WEIGHTS[module]
        weights.parent.mkdir(parents=True, exist_ok=True)
        weights.write_bytes(b"")
    assert worker_preprocessors(tmp_path) == [
        *BUILT_IN,
        "softedge_hed",
        "softedge_hedsafe",  # the same network, quantised: the same file
        "openpose",
    ]


def test_the_networks_have_the_released_files_layouts(torch: Any) -> None:
    """Parameter counts and key names of ControlNetHED.pth (14.7 M, fp16: 29.4 MB) and
    body_pose_model.pth (52.3 M, fp32: 209 MB, keys the bare layer names)."""
    from gpu_worker.hed import ControlNetHED
    from gpu_worker.openpose import BodyPoseNet

    hed = ControlNetHED().state_dict()
    assert sum(v.numel() for v in hed.values()) == 14_716_168
    assert {
        "norm",
        "block1.convs.1.weight",
        "block5.convs.2.bias",
        "block5.projection.weight",
    } <= set(hed)
    body = BodyPoseNet().file_state()
    assert len(body) == 184 and sum(v.numel() for v in body.values()) == 52_311_446
    assert body["Mconv1_stage2_L1.weight"].shape == (128, 185, 7, 7)  # 38 + 19 + 128 in
    assert body["conv5_5_CPM_L2.weight"].shape == (19, 512, 1, 1)


def test_soft_edges_are_grey_maps_at_the_processor_resolution_and_safe_is_three_levels(
    edge_and_pose_models: Path, torch: Any
) -> None:
    from gpu_worker.annotators import Annotators

    annotators = Annotators(edge_and_pose_models, torch.device("cpu"))
    hed = np.asarray(annotators.control_map("softedge_hed", square(64), 48, 0, 0))
    assert hed.shape == (48, 48, 3)
    assert (hed[..., 0] == hed[..., 1]).all() and (hed[..., 0] == hed[..., 2]).all()
    assert len(np.unique(hed)) > 3  # a soft map, not a blank
    safe = np.asarray(annotators.control_map("softedge_hedsafe", square(64), 48, 0, 0))
    # the extension's safe_step: sigmoid under 1/3 is 0, under 2/3 is half, else full
    expected = np.where(hed < 85, 0, np.where(hed < 170, 127, 255))
    assert np.array_equal(safe, expected)


def test_openpose_maps_come_at_the_images_size_and_draw_on_black(
    edge_and_pose_models: Path, torch: Any
) -> None:
    from safetensors.torch import load_file

    from gpu_worker.annotators import Annotators
    from gpu_worker.openpose import BodyPoseNet, body_maps

    weights = load_file(str(edge_and_pose_models / ANNOTATOR_WEIGHTS["openpose"]))
    net = BodyPoseNet.from_file_state(weights).eval()
    heatmaps, pafs = body_maps(net, Image.new("RGB", (50, 37), "grey"))  # not multiples of 8
    assert heatmaps.shape == (37, 50, 19) and pafs.shape == (37, 50, 38)

    annotators = Annotators(edge_and_pose_models, torch.device("cpu"))
    pose = annotators.control_map("openpose", square(64), 48, 0, 0)
    assert pose.size == (48, 48) and pose.mode == "RGB"
    assert np.asarray(pose)[:4, :4].max() == 0  # drawn on black (random weights: nobody)
    with pytest.raises(ValueError, match="not a body pose model"):
        BodyPoseNet.from_file_state(
            load_file(str(edge_and_pose_models / ANNOTATOR_WEIGHTS["softedge_hed"]))
        )


def test_a_job_runs_a_soft_edge_unit_and_names_it(
    edge_and_pose_models: Path, demo_models_dir: Path, atelier_cache_dir: Path, tmp_path: Path
) -> None:
    models = tmp_path / "models"
    shutil.copytree(demo_models_dir, models, ignore=shutil.ignore_patterns(".atelier-hashes.json"))
    shutil.copytree(edge_and_pose_models / "Annotators", models / "Annotators")
    engine = make_engine(models, atelier_cache_dir)
    edges = run(engine, unit(module="softedge_hed"))
    assert pixels(edges) != pixels(run(engine, unit()))  # not canny's map
    info = parse_infotext(edges.images[0]["infotext"])
    assert info["ControlNet 0"].startswith("Module: softedge_hed, Model: ")
