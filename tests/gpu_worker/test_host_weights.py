"""The model cache's RAM tier in page-locked memory: weights moved out and back unchanged, one
buffer reused per model, counted as RAM and given back first when RAM is short.

The layout tests run anywhere; the tests of pinned memory itself need CUDA (skipped without
it; they ran on an H200, see README's performance section). The CUDA ones are self-contained,
so `python3 -m pytest --noconftest -o addopts= -k cuda tests/gpu_worker/test_host_weights.py`
runs them on a GPU machine that has no Django."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest

from tests.gpu_worker.conftest import demo_request  # a plain function: --noconftest too


def weights(pipe: Any) -> dict[str, Any]:
    from gpu_worker.host_weights import modules_of

    return {
        f"{i}.{name}": tensor
        for i, module in enumerate(modules_of(pipe))
        for name, tensor in module.state_dict(keep_vars=True).items()
    }


def png_pixels(result: Any) -> Any:
    import numpy as np
    from PIL import Image

    data = base64.b64decode(result.images[0]["png_b64"])
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_weights_round_trip_through_one_host_buffer(
    demo_models_dir: Path, atelier_cache_dir: Path, torch: Any
) -> None:
    from gpu_worker.engine import Engine
    from gpu_worker.host_weights import host_bytes, to_device, to_host
    from gpu_worker.model_cache import ModelCache
    from gpu_worker.speed_options import SpeedOptions

    cache = ModelCache(device="cpu", device_budget_bytes=1 << 30, ram_budget_bytes=1 << 30)
    engine = Engine(
        models_dir=demo_models_dir,
        cache=cache,
        cache_dir=atelier_cache_dir,
        speed=SpeedOptions(channels_last=True),  # strides that must survive the trip
    )
    request = demo_request()
    before = png_pixels(engine.run(request))
    pipe = engine.pipeline(engine.resolve("checkpoint", "atelier-demo-v1"), None)
    originals = {k: (t, t.detach().clone(), t.stride()) for k, t in weights(pipe).items()}
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last)

    host = to_host(pipe, None)
    assert (
        host.nbytes
        == host_bytes(pipe)
        >= sum(t.numel() * t.element_size() for t, _, _ in originals.values())
    )
    start = host.buffer.data_ptr()
    for key, tensor in weights(pipe).items():
        param, value, stride = originals[key]
        assert tensor is param  # the same Parameter objects: adapters and compiled code hold them
        assert torch.equal(tensor, value) and tensor.stride() == stride, key
        assert start <= tensor.data_ptr() < start + host.nbytes, f"{key} is not in the buffer"
    to_device(pipe, torch.device("cpu"))
    assert to_host(pipe, host) is host  # the next offload reuses the buffer
    assert (png_pixels(engine.run(request)) == before).all()


def test_shared_tensors_stay_shared(torch: Any) -> None:
    from gpu_worker.host_weights import to_host

    embedding = torch.nn.Embedding(10, 4)
    head = torch.nn.Linear(4, 10, bias=False)
    head.weight = embedding.weight  # tied, as some text encoders are
    model = torch.nn.Sequential(embedding, head)
    host = to_host(model, None)
    assert model[0].weight is model[1].weight
    assert host.nbytes == 256  # stored once: 40 floats rounded up to one 256-byte slot


cuda = pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")


@cuda
def test_cuda_switch_goes_through_pinned_ram_and_back(tmp_path: Path) -> None:
    from gpu_worker.demo_model import make_demo_models
    from gpu_worker.engine import Engine
    from gpu_worker.model_cache import ModelCache, pipeline_bytes

    make_demo_models(tmp_path / "models")

    def engine(**budgets: int) -> Engine:
        cache = ModelCache(device="cuda", **budgets)  # type: ignore[arg-type]
        return Engine(models_dir=tmp_path / "models", cache=cache, cache_dir=tmp_path / "c")

    def entry(target: Engine, name: str) -> Any:
        item = target.resolve("checkpoint", name)
        return target.cache.entry((item.sha256, None))

    probe = engine(device_budget_bytes=1 << 30, ram_budget_bytes=1 << 30)
    size = pipeline_bytes(probe.pipeline(probe.resolve("checkpoint", "atelier-demo-v1"), None))
    one = engine(device_budget_bytes=int(size * 1.5), ram_budget_bytes=int(size * 4))
    v1, v2 = (demo_request(checkpoint=f"atelier-demo-v{i}") for i in (1, 2))
    first = png_pixels(one.run(v1))
    one.run(v2)  # v1 goes out to RAM
    waiting = entry(one, "atelier-demo-v1")
    assert not waiting.on_device and waiting.host is not None and waiting.host.pinned
    weight = waiting.pipe.unet.conv_in.weight
    assert weight.device.type == "cpu" and weight.is_pinned()
    assert one.cache.ram_bytes() == size

    assert (png_pixels(one.run(v1)) == first).all()  # back on the GPU, the same image
    # v1 keeps its buffer for the next trip (counted as RAM); v2 waits in RAM
    host = waiting.host
    assert waiting.on_device and host is not None
    assert one.cache.ram_bytes() == size + host.nbytes
    one.run(v2)
    assert waiting.host is host  # reused, not pinned again

    short = engine(device_budget_bytes=int(size * 1.5), ram_budget_bytes=int(size * 1.2))
    for request in (v1, v2, v1):  # the last: v2 out, v1 in; v1's kept buffer is over budget
        short.run(request)
    back, out = entry(short, "atelier-demo-v1"), entry(short, "atelier-demo-v2")
    assert back.on_device and back.host is None  # its buffer was given back...
    assert out is not None and not out.on_device  # ...rather than a model dropped
    assert short.cache.ram_bytes() <= int(size * 1.2)
