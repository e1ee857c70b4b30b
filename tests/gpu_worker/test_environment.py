"""The engine's environment: no torchvision/timm, diffusers' SD import works, offline tokenizer."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_torchvision_and_timm_are_not_installed() -> None:
    # PyPI's torchvision beside the CPU torch breaks `from diffusers import StableDiffusionPipeline`
    assert importlib.util.find_spec("torchvision") is None
    assert importlib.util.find_spec("timm") is None


def test_stable_diffusion_pipeline_imports() -> None:
    from diffusers import StableDiffusionPipeline  # noqa: F401


def test_clip_tokenizer_built_from_open_clip_vocabulary_gives_the_real_ids(tmp_path: Path) -> None:
    from transformers import CLIPTokenizer

    from gpu_worker.clip_vocab import write_tokenizer_folder

    tokenizer = CLIPTokenizer.from_pretrained(write_tokenizer_folder(tmp_path / "tok"))
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == 77
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]


@pytest.mark.parametrize(
    "module",
    [
        "gpu_worker.protocol",
        "gpu_worker.catalogue",
        "gpu_worker.infotext",
        "gpu_worker.samplers",
        "gpu_worker.prompt_syntax",
        "gpu_worker.clip_vocab",
    ],
)
def test_web_side_modules_do_not_import_torch(module: str) -> None:
    code = (
        f"import sys, {module}, gpu_worker.samplers as s; s.list_samplers(); "
        "bad = [m for m in ('torch', 'diffusers', 'transformers', 'django', 'open_clip') "
        "if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_help_explains_the_options() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gpu_worker", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0
    for option in (
        "--device",
        "--gpu-memory-budget",
        "--ram-budget",
        "--models-dir",
        "--allow-pickle",
        "--threads",
        "generate",
        "make-demo-model",
        "scan",
    ):
        assert option in done.stdout
    assert "torch" not in done.stderr
