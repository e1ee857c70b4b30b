"""Weight-based ControlNet annotators (lineart): listed only where their weights lie in the models
folder, run as sd-webui-controlnet runs them, in jobs and previews. Random weights, 64 px."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image, ImageDraw

from gpu_worker.engine import JobFailed
from gpu_worker.infotext import parse_infotext
from gpu_worker.preprocessors import ANNOTATOR_WEIGHTS, worker_preprocessors

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
    assert worker_preprocessors(tmp_path) == ["none", "canny"]
    weights = tmp_path / ANNOTATOR_WEIGHTS["lineart_coarse"]
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"")
    assert worker_preprocessors(tmp_path) == ["none", "canny", "lineart_coarse"]


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
