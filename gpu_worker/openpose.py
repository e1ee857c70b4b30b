"""The openpose annotator, body only (sd-webui-controlnet's "openpose" module): the CMU body
network of `body_pose_model.pth` (converted to safetensors) and its pre- and post-processing;
gpu_worker/pose_grouping.py turns its maps into skeletons and draws them.

The network: a VGG-19 front (conv1_1 .. conv4_2) and two CPM convolutions make features; stage 1
has two branches (L1: 38 part-affinity channels, 19 limb pairs x (x, y); L2: 19 heatmaps, 18
joints and the background), and stages 2..6 each take both branches' last output beside the
features and refine them. The file's keys are the bare layer names ("conv1_1.weight",
"Mconv7_stage6_L2.bias"): that is how the extension loads them too.

As the extension runs it: the image (RGB from the caller, BGR for the network, which was trained
in Caffe) scaled so its height is 184 (368 x 0.5), padded right and down to a multiple of 8 with
grey 128, scaled to -0.5..0.5; the maps scaled up x8, the padding cut, and scaled to the image.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch import nn

from gpu_worker.pose_grouping import HEATMAP_CHANNELS, PAF_CHANNELS, draw_bodies, find_bodies

BOX_SIZE = 368
SCALE = 0.5  # the extension's single scale_search
STRIDE = 8
PAD_VALUE = 128
STAGES = 6


@dataclass(frozen=True)
class BodyWidths:
    """Channel counts of the network (the released one's by default; tests use small ones)."""

    vgg: tuple[int, int, int, int] = (64, 128, 256, 512)
    cpm: int = 256  # conv4_3_CPM
    features: int = 128  # conv4_4_CPM: what every stage sees
    stage1: int = 128
    stage1_wide: int = 512  # conv5_4_CPM
    stage: int = 128  # Mconv1..6 of stages 2..6


def _layers(spec: list[tuple[str, int, int, int]], no_relu: set[str]) -> nn.Sequential:
    """Named convolutions (name, in, out, kernel; "pool" names a 2x2 max-pool), each followed by
    a ReLU unless its name is in `no_relu`."""
    layers: list[tuple[str, nn.Module]] = []
    for name, cin, cout, kernel in spec:
        if name.startswith("pool"):
            layers.append((name, nn.MaxPool2d(2, 2)))
            continue
        layers.append((name, nn.Conv2d(cin, cout, kernel, padding=kernel // 2)))
        if name not in no_relu:
            layers.append((f"relu_{name}", nn.ReLU(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


class BodyPoseNet(nn.Module):
    """Module names `model0`, `model1_1` .. `model6_2` hold layers named as in the file."""

    def __init__(self, widths: BodyWidths | None = None) -> None:
        super().__init__()
        w = widths or BodyWidths()
        a, b, c, d = w.vgg
        front = [("conv1_1", 3, a, 3), ("conv1_2", a, a, 3), ("pool1_stage1", 0, 0, 0)]
        front += [("conv2_1", a, b, 3), ("conv2_2", b, b, 3), ("pool2_stage1", 0, 0, 0)]
        front += [("conv3_1", b, c, 3)] + [(f"conv3_{i}", c, c, 3) for i in (2, 3, 4)]
        front += [("pool3_stage1", 0, 0, 0), ("conv4_1", c, d, 3), ("conv4_2", d, d, 3)]
        front += [("conv4_3_CPM", d, w.cpm, 3), ("conv4_4_CPM", w.cpm, w.features, 3)]
        self.model0 = _layers(front, set())
        # The released code's list of layers without ReLU names stage 6's L1 twice and not its
        # L2, so the final heatmaps pass a ReLU: kept, the maps would differ without it.
        no_relu = {"conv5_5_CPM_L1", "conv5_5_CPM_L2"}
        no_relu |= {f"Mconv7_stage{s}_L{b}" for s in range(2, STAGES) for b in (1, 2)}
        no_relu.add("Mconv7_stage6_L1")
        stage_in = PAF_CHANNELS + HEATMAP_CHANNELS + w.features
        for branch, out in ((1, PAF_CHANNELS), (2, HEATMAP_CHANNELS)):
            first = [(f"conv5_{i}_CPM_L{branch}", w.stage1, w.stage1, 3) for i in (1, 2, 3)]
            first[0] = (f"conv5_1_CPM_L{branch}", w.features, w.stage1, 3)
            first += [(f"conv5_4_CPM_L{branch}", w.stage1, w.stage1_wide, 1)]
            first += [(f"conv5_5_CPM_L{branch}", w.stage1_wide, out, 1)]
            self.add_module(f"model1_{branch}", _layers(first, no_relu))
            for s in range(2, STAGES + 1):
                spec = [(f"Mconv1_stage{s}_L{branch}", stage_in, w.stage, 7)]
                spec += [(f"Mconv{i}_stage{s}_L{branch}", w.stage, w.stage, 7) for i in range(2, 6)]
                spec += [(f"Mconv6_stage{s}_L{branch}", w.stage, w.stage, 1)]
                spec += [(f"Mconv7_stage{s}_L{branch}", w.stage, out, 1)]
                self.add_module(f"model{s}_{branch}", _layers(spec, no_relu))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(part affinity fields, heatmaps) of the last stage, at 1/8 of the input's size."""
        features = self.model0(x)
        pafs, heatmaps = self._stage(1, 1)(features), self._stage(1, 2)(features)
        for s in range(2, STAGES + 1):
            h = torch.cat([pafs, heatmaps, features], dim=1)
            pafs, heatmaps = self._stage(s, 1)(h), self._stage(s, 2)(h)
        return pafs, heatmaps

    def _stage(self, stage: int, branch: int) -> nn.Module:
        module: nn.Module = getattr(self, f"model{stage}_{branch}")
        return module

    def file_state(self) -> dict[str, torch.Tensor]:
        """The state under the file's bare layer names."""
        return {k.split(".", 1)[1]: v.contiguous() for k, v in self.state_dict().items()}

    @classmethod
    def from_file_state(cls, state: dict[str, torch.Tensor]) -> BodyPoseNet:
        """The network the file's weights describe (its widths read from their shapes)."""

        if "conv1_1.weight" not in state or "Mconv7_stage6_L2.weight" not in state:
            raise ValueError("not a body pose model: no conv1_1 or Mconv7_stage6_L2 weights")

        def out(name: str) -> int:
            return int(state[f"{name}.weight"].shape[0])

        widths = BodyWidths(
            vgg=(out("conv1_1"), out("conv2_1"), out("conv3_1"), out("conv4_1")),
            cpm=out("conv4_3_CPM"),
            features=out("conv4_4_CPM"),
            stage1=out("conv5_1_CPM_L1"),
            stage1_wide=out("conv5_4_CPM_L1"),
            stage=out("Mconv1_stage2_L1"),
        )
        net = cls(widths)
        names = {k: k.split(".", 1)[1] for k in net.state_dict()}
        missing = sorted(set(names.values()) - set(state))
        if missing or len(state) != len(names):
            raise ValueError(f"not a body pose model: missing {missing[:3]}")
        net.load_state_dict({k: state[bare] for k, bare in names.items()})
        return net


def _resize(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (width, height) as the extension does: area when shrinking, Lanczos when growing."""
    grow = size[0] + size[1] >= maps.shape[0] + maps.shape[1]
    interpolation = cv2.INTER_LANCZOS4 if grow else cv2.INTER_AREA
    channels = maps.shape[2] if maps.ndim == 3 else 1
    if channels <= 4:
        out = cv2.resize(maps, size, interpolation=interpolation)
        return out.reshape(size[1], size[0], *maps.shape[2:])
    return np.stack(
        [cv2.resize(maps[..., i], size, interpolation=interpolation) for i in range(channels)],
        axis=2,
    )


@torch.inference_mode()
def body_maps(net: BodyPoseNet, image: Image.Image) -> tuple[np.ndarray, np.ndarray]:
    """(heatmaps H x W x 19, part affinity fields H x W x 38) of an RGB image, at its size."""
    device = next(net.parameters()).device
    rgb = np.asarray(image.convert("RGB"))
    bgr = np.ascontiguousarray(rgb[:, :, ::-1])
    height, width = bgr.shape[:2]
    scale = BOX_SIZE * SCALE / height
    scaled_size = (max(1, int(width * scale)), max(1, int(height * scale)))
    scaled = _resize(bgr, scaled_size)
    pad_h, pad_w = -scaled.shape[0] % STRIDE, -scaled.shape[1] % STRIDE
    padded = cv2.copyMakeBorder(
        scaled, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=(PAD_VALUE,) * 3
    )
    x = torch.from_numpy(padded.astype(np.float32) / 256.0 - 0.5).permute(2, 0, 1).unsqueeze(0)
    pafs, heatmaps = net(x.to(device))

    def to_image_size(maps: torch.Tensor) -> np.ndarray:
        array = maps[0].permute(1, 2, 0).float().cpu().numpy()
        array = _resize(array, (array.shape[1] * STRIDE, array.shape[0] * STRIDE))
        array = array[: padded.shape[0] - pad_h, : padded.shape[1] - pad_w]
        return _resize(array, (width, height))

    return to_image_size(heatmaps), to_image_size(pafs)


def openpose(net: BodyPoseNet, image: Image.Image) -> Image.Image:
    """The body skeletons found in an RGB image, drawn on black at its size."""
    heatmaps, pafs = body_maps(net, image)
    canvas = draw_bodies(*find_bodies(heatmaps, pafs), size=(image.width, image.height))
    return Image.fromarray(canvas)


def random_body_weights(path: Path, widths: BodyWidths | None = None, seed: int = 0) -> None:
    """A random-weight network saved in the file's layout where a worker looks for it (tests
    and demos use small `widths`)."""
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(BodyPoseNet(widths).file_state(), str(path))
