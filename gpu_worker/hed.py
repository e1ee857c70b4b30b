"""The soft-edge annotator (sd-webui-controlnet's softedge_hed and softedge_hedsafe): the
ControlNetHED_Apache2 network, a VGG-like stack of five convolution blocks, each ending in a 1x1
projection to one edge channel (`ControlNetHED.pth`, converted to safetensors).

As the extension runs it: the RGB image at the processor resolution, raw 0..255 values (the
network subtracts its learned `norm`), each block's projection upsampled to the image size, the
five averaged, a sigmoid; "safe" quantises that to a few levels, so that small noise in the
edges does not carry into the ControlNet. The map is white edges on black, grey, 0..255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.nn import functional

# (convolutions, channels) of the five blocks of the released network
HED_BLOCKS = ((2, 64), (2, 128), (3, 256), (3, 512), (3, 512))
SAFE_STEPS = 2  # the extension's safe_step: values snapped to multiples of 1/2 (0, 0.5, 1, 1.5)


class _EdgeBlock(nn.Module):
    """`layers` 3x3 convolutions with ReLU, and a 1x1 projection to one edge channel."""

    def __init__(self, in_channels: int, channels: int, layers: int) -> None:
        super().__init__()
        widths = [in_channels] + [channels] * layers
        self.convs = nn.Sequential(
            *(nn.Conv2d(widths[i], channels, 3, padding=1) for i in range(layers))
        )
        self.projection = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for conv in self.convs:
            x = functional.relu(conv(x))
        return x, self.projection(x)


class ControlNetHED(nn.Module):
    """The network with the released file's names (`norm`, `block1.convs.0.weight`, ...
    `block5.projection.bias`). `blocks` other than HED_BLOCKS make small test networks."""

    def __init__(self, blocks: tuple[tuple[int, int], ...] = HED_BLOCKS) -> None:
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))
        channels = 3
        for index, (layers, width) in enumerate(blocks, start=1):
            self.add_module(f"block{index}", _EdgeBlock(channels, width, layers))
            channels = width
        self.count = len(blocks)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x - self.norm
        projections = []
        for index in range(1, self.count + 1):
            if index > 1:
                h = functional.max_pool2d(h, kernel_size=2, stride=2)
            h, projection = getattr(self, f"block{index}")(h)
            projections.append(projection)
        return projections

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor]) -> ControlNetHED:
        """The network the weights describe (block widths and depths read from their shapes)."""
        blocks = []
        index = 1
        while f"block{index}.projection.weight" in state:
            layers = sum(
                1 for k in state if k.startswith(f"block{index}.convs.") and k.endswith(".weight")
            )
            blocks.append((layers, int(state[f"block{index}.convs.0.weight"].shape[0])))
            index += 1
        net = cls(tuple(blocks))
        net.load_state_dict(state)
        return net


@torch.inference_mode()
def soft_edges(net: ControlNetHED, image: Image.Image, *, safe: bool) -> Image.Image:
    """The soft-edge map of an RGB image, at its size."""
    device = next(net.parameters()).device
    pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32))
    x = pixels.permute(2, 0, 1).unsqueeze(0).to(device)
    size = x.shape[-2:]
    edges = [
        functional.interpolate(p.float(), size=size, mode="bilinear", align_corners=False)
        for p in net(x)
    ]
    edge = torch.sigmoid(torch.cat(edges, dim=1).mean(dim=1))[0].double().cpu().numpy()
    if safe:
        edge = np.floor(edge * (SAFE_STEPS + 1)) / SAFE_STEPS
    values = (edge * 255.0).clip(0, 255).astype(np.uint8)
    return Image.fromarray(values).convert("RGB")


def random_hed_weights(
    path: Path, blocks: tuple[tuple[int, int], ...] = HED_BLOCKS, seed: int = 0
) -> None:
    """A random-weight network saved in the released key layout where a worker looks for it
    (tests and demos use small `blocks`)."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = ControlNetHED(blocks)
    with torch.no_grad():
        net.norm.uniform_(100, 150)  # the released one holds a mean pixel
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
