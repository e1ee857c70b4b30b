"""Weight-based ControlNet annotators, run by the worker where their weights lie in the models
folder (gpu_worker/preprocessors.py lists them and runs the weight-free ones).

lineart_realistic, lineart_coarse (here): sd-webui-controlnet's lineart annotator, the "informative
drawings" generator (a small ResNet: a 7x7 stem, two stride-2 convolutions, three residual
blocks, two transposed convolutions, a 7x7 head with a sigmoid), weights `sk_model` and
`sk_model2`. As the extension does it: the image at the processor resolution, scaled to 0..1,
through the network; the map is 255 minus its output (white lines on black).
softedge_hed and softedge_hedsafe: gpu_worker/hed.py. openpose (body only): gpu_worker/openpose.py
with gpu_worker/pose_grouping.py.

`Annotators` is the object the engine owns: it loads each network once (keyed by its file's
path, size and mtime, so replaced weights are read again) and runs one at a time, because job
thread and preview thread may both ask.
"""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from gpu_worker.hed import ControlNetHED, soft_edges
from gpu_worker.openpose import BodyPoseNet, openpose
from gpu_worker.preprocessors import ANNOTATOR_WEIGHTS, resize_short_side, run_preprocessor

LINEART_MODULES = ("lineart_realistic", "lineart_coarse")
HED_MODULES = ("softedge_hed", "softedge_hedsafe")
OPENPOSE_MODULES = ("openpose",)
LINEART_BLOCKS = 3
PAD_MULTIPLE = 8  # the network halves the size twice and doubles it back


class _ResidualBlock(nn.Module):
    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1),
            nn.Conv2d(features, features, 3),
            nn.InstanceNorm2d(features),
            nn.ReLU(inplace=True),
            nn.ReflectionPad2d(1),
            nn.Conv2d(features, features, 3),
            nn.InstanceNorm2d(features),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class LineartGenerator(nn.Module):
    """The lineart network, with the extension's module names (its state dict loads as is)."""

    def __init__(self, blocks: int = LINEART_BLOCKS) -> None:
        super().__init__()
        self.model0 = nn.Sequential(
            nn.ReflectionPad2d(3), nn.Conv2d(3, 64, 7), nn.InstanceNorm2d(64), nn.ReLU(inplace=True)
        )
        down: list[nn.Module] = []
        for features in (64, 128):
            down += [
                nn.Conv2d(features, features * 2, 3, stride=2, padding=1),
                nn.InstanceNorm2d(features * 2),
                nn.ReLU(inplace=True),
            ]
        self.model1 = nn.Sequential(*down)
        self.model2 = nn.Sequential(*[_ResidualBlock(256) for _ in range(blocks)])
        up: list[nn.Module] = []
        for features in (256, 128):
            up += [
                nn.ConvTranspose2d(
                    features, features // 2, 3, stride=2, padding=1, output_padding=1
                ),
                nn.InstanceNorm2d(features // 2),
                nn.ReLU(inplace=True),
            ]
        self.model3 = nn.Sequential(*up)
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(64, 1, 7), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model4(self.model3(self.model2(self.model1(self.model0(x)))))


class Annotators:
    def __init__(self, models_dir: Path, device: torch.device) -> None:
        self.models_dir = models_dir
        self.device = device
        self._nets: dict[tuple[str, int, int], nn.Module] = {}
        self._lock = threading.Lock()

    def control_map(
        self,
        module: str,
        image: Image.Image,
        processor_res: int,
        low: float,
        high: float,
        *,
        seed: int | None = None,
    ) -> Image.Image:
        """The control map of `image` for any module this worker runs (`seed`: shuffle's)."""
        if module not in ANNOTATOR_WEIGHTS:
            return run_preprocessor(module, image, processor_res, low, high, seed=seed)
        weights = self.models_dir / ANNOTATOR_WEIGHTS[module]
        if not weights.is_file():
            raise ValueError(f"preprocessor {module!r} has no weights on this worker")
        image = resize_short_side(image.convert("RGB"), processor_res)
        with self._lock:
            net = self._load(module, weights)
            if isinstance(net, ControlNetHED):
                return soft_edges(net, image, safe=module == "softedge_hedsafe")
            if isinstance(net, BodyPoseNet):
                return openpose(net, image)
            return _lineart(net, image)

    def _load(self, module: str, weights: Path) -> nn.Module:
        stat = weights.stat()
        key = (str(weights), stat.st_size, stat.st_mtime_ns)
        if key not in self._nets:
            net = _network(module, weights)
            self._nets = {key: net.to(self.device).eval()}  # one at a time: they are small
        return self._nets[key]


def _network(module: str, weights: Path) -> nn.Module:
    """The module's network with these weights (modules sharing a network share its file, so
    softedge_hed's network serves softedge_hedsafe too)."""
    state = load_file(str(weights))
    if module in HED_MODULES:
        return ControlNetHED.from_state_dict(state)
    if module in OPENPOSE_MODULES:
        return BodyPoseNet.from_file_state(state)
    net = LineartGenerator()
    net.load_state_dict(state)
    return net


@torch.inference_mode()
def _lineart(net: nn.Module, image: Image.Image) -> Image.Image:
    device = next(net.parameters()).device
    pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)
    x = pixels.permute(2, 0, 1).unsqueeze(0).to(device)
    height, width = x.shape[-2:]
    pad_h, pad_w = -height % PAD_MULTIPLE, -width % PAD_MULTIPLE
    if pad_h or pad_w:
        x = nn.functional.pad(x, (0, pad_w, 0, pad_h), mode="replicate")
    line = net(x)[0, 0, :height, :width]
    values = (line * 255.0).clamp(0, 255).to(torch.uint8).cpu().numpy()
    return Image.fromarray(255 - values).convert("RGB")


def random_lineart_weights(path: Path, seed: int = 0) -> None:
    """A random-weight lineart network saved where a worker looks for it (tests, demos)."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in LineartGenerator().state_dict().items()}, str(path))
