"""The worker's speed options (--channels-last, --compile): from the command line or the
environment to each loaded pipeline, and the images they make.

A compiled UNet is not run here: inductor takes over a minute to compile even the demo UNet on
this CPU. bench/bench_engine_gpu_unet.py runs every option on a GPU and prints each image's
largest pixel difference from eager (README: 1 of 255 with CUDA graphs on an H200)."""

from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any

import pytest

from gpu_worker.__main__ import build_engine, build_parser
from gpu_worker.speed_options import SpeedOptions
from tests.gpu_worker.conftest import demo_request


def test_an_unknown_compile_mode_names_the_choices() -> None:
    with pytest.raises(ValueError, match="'fast'.*reduce-overhead"):
        SpeedOptions(compile_mode="fast")


def test_flags_and_environment_reach_the_engine(
    demo_models_dir: Path, monkeypatch: pytest.MonkeyPatch, torch: Any
) -> None:
    common = ["--device", "cpu", "--models-dir", str(demo_models_dir)]
    args = build_parser().parse_args([*common, "worker", "--channels-last", "--compile", "default"])
    assert build_engine(args).speed == SpeedOptions(channels_last=True, compile_mode="default")
    assert build_engine(build_parser().parse_args(common)).speed == SpeedOptions()

    monkeypatch.setenv("ATELIER_TORCH_COMPILE", "reduce-overhead")
    monkeypatch.setenv("ATELIER_CHANNELS_LAST", "1")
    engine = build_engine(build_parser().parse_args(common))
    assert engine.speed == SpeedOptions(channels_last=True, compile_mode="reduce-overhead")
    pipe = engine.pipeline(engine.resolve("checkpoint", "atelier-demo-v1"), None)
    assert pipe.unet._compiled_call_impl is not None  # compiled in place: the same module
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)


def test_channels_last_makes_the_same_image_within_rounding(
    demo_models_dir: Path, atelier_cache_dir: Path, torch: Any
) -> None:
    import numpy as np
    from PIL import Image

    from gpu_worker.engine import Engine
    from gpu_worker.model_cache import ModelCache

    def image(speed: SpeedOptions) -> Any:
        cache = ModelCache(device="cpu", device_budget_bytes=1 << 30, ram_budget_bytes=1 << 30)
        engine = Engine(
            models_dir=demo_models_dir, cache=cache, cache_dir=atelier_cache_dir, speed=speed
        )
        pipe = engine.pipeline(engine.resolve("checkpoint", "atelier-demo-v1"), None)
        assert pipe.unet._compiled_call_impl is None
        png = engine.run(demo_request(seed=21)).images[0]["png_b64"]
        return np.asarray(Image.open(io.BytesIO(base64.b64decode(png))), dtype=np.int16)

    # NHWC convolutions sum in another order: rounding, never a different picture
    difference = abs(image(SpeedOptions(channels_last=True)) - image(SpeedOptions()))
    assert difference.max() <= 2 and difference.mean() < 0.1, difference.max()


def test_a_misspelt_compile_mode_stops_the_worker_with_a_clear_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ATELIER_TORCH_COMPILE", "reduce_overhead")
    with pytest.raises(SystemExit) as stopped:
        build_parser().parse_args(["worker"])
    assert stopped.value.code == 2
    error = capsys.readouterr().err
    assert "'reduce_overhead' is not a compile mode (ATELIER_TORCH_COMPILE" in error
    assert "reduce-overhead" in error


@pytest.mark.parametrize(("raw", "on"), [("1", True), ("TRUE", True), ("0", False), ("", False)])
def test_channels_last_from_the_environment(
    raw: str, on: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATELIER_CHANNELS_LAST", raw)
    assert build_parser().parse_args(["worker"]).channels_last is on


def test_a_channels_last_typo_stops_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATELIER_CHANNELS_LAST", "yes please")
    with pytest.raises(SystemExit, match="ATELIER_CHANNELS_LAST must be 1, true, 0 or false"):
        build_parser()


def test_compiled_kernels_are_kept_in_the_workers_cache_dir(
    demo_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """So a restarted worker compiles from them (the demo on this CPU: 46 s cold, 7 s warm)
    instead of inductor's /tmp, which a container loses; an operator's own choice stands."""
    from gpu_worker.__main__ import main

    scan = ["--compile", "reduce-overhead", "--cache-dir", str(tmp_path), "scan"]
    monkeypatch.setattr(os, "environ", dict(os.environ))  # main() sets variables: a copy
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    assert main([*scan, "--models-dir", str(demo_models_dir)]) == 0
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == str(tmp_path / "inductor")

    os.environ["TORCHINDUCTOR_CACHE_DIR"] = "/srv/kernels"
    assert main([*scan, "--models-dir", str(demo_models_dir)]) == 0
    assert os.environ["TORCHINDUCTOR_CACHE_DIR"] == "/srv/kernels"


def test_without_compile_inductors_cache_is_left_alone(
    demo_models_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gpu_worker.__main__ import main

    monkeypatch.setattr(os, "environ", dict(os.environ))
    os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
    assert main(["--cache-dir", str(tmp_path), "scan", "--models-dir", str(demo_models_dir)]) == 0
    assert "TORCHINDUCTOR_CACHE_DIR" not in os.environ
