"""sd-webui-controlnet's weight-free preprocessors, written from its behaviour: each takes an RGB
uint8 array (H, W, 3) and returns the extension's map as one (RGB, uint8). OpenCV and numpy
only; the worker imports this where maps are made (gpu_worker/preprocessors.py).

Where the extension works at a "processor resolution" it scales the image's short side to it
(cubic up, area down) and pads the result with its edge pixels to a multiple of 64 before
filtering, cutting the padding off after; the filters that look at neighbours (XDoG, lineart)
see that padding near the right and bottom edges, so it is done here too.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

Pixels = np.ndarray
PAD_MULTIPLE = 64
SHUFFLE_CELL = 256  # the shuffle's noise is smooth over cells of this many pixels
TILE_IDENTITY_BELOW = 1.1  # tile_resample keeps the image as it is under this rate


def padded(pixels: Pixels, resolution: int) -> tuple[Pixels, Callable[[Pixels], Pixels]]:
    """The image scaled to `resolution` (short side) and edge-padded to a multiple of 64, and
    the function that cuts a map of it back to the scaled size."""
    height, width = pixels.shape[:2]
    scale = float(resolution) / float(min(height, width))
    size_h, size_w = int(np.round(height * scale)), int(np.round(width * scale))
    interpolation = cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA
    scaled = cv2.resize(pixels, (size_w, size_h), interpolation=interpolation)
    pad_h, pad_w = -size_h % PAD_MULTIPLE, -size_w % PAD_MULTIPLE
    out = np.pad(scaled, [[0, pad_h], [0, pad_w], [0, 0]], mode="edge")
    return np.ascontiguousarray(out), lambda m: np.ascontiguousarray(m[:size_h, :size_w])


def scaled(pixels: Pixels, resolution: int) -> Pixels:
    image, unpad = padded(pixels, resolution)
    return unpad(image)


def rgb(gray: Pixels) -> Pixels:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def invert(pixels: Pixels) -> Pixels:
    """White background with black lines -> black background with white lines (no resize)."""
    return 255 - pixels


def threshold(pixels: Pixels, resolution: int, level: float) -> Pixels:
    """255 where every channel is above `level`, else 0."""
    image = scaled(pixels, resolution)
    return rgb(np.where(image.min(axis=2) > level, 255, 0).astype(np.uint8))


def blur_gaussian(pixels: Pixels, resolution: int, sigma: float) -> Pixels:
    return cv2.GaussianBlur(scaled(pixels, resolution), (0, 0), float(sigma))


def scribble_xdog(pixels: Pixels, resolution: int, level: float) -> Pixels:
    """A difference of Gaussians (sigma 0.5 and 5), thresholded: white strokes on black."""
    image, unpad = padded(pixels, resolution)
    fine = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 0.5)
    coarse = cv2.GaussianBlur(image.astype(np.float32), (0, 0), 5.0)
    dog = (255 - np.min(coarse - fine, axis=2)).clip(0, 255).astype(np.uint8)
    # The extension doubles in uint8, so strong edges wrap around (& 0xFF keeps that).
    strength = (2 * (255 - dog.astype(np.int32))) & 0xFF
    return unpad(rgb(np.where(strength > level, 255, 0).astype(np.uint8)))


def lineart_standard(pixels: Pixels, resolution: int) -> Pixels:
    """Dark lines on a light background -> white lines on black: how much darker each pixel is
    than its blurred surroundings (sigma 6), scaled by the median line strength."""
    image, unpad = padded(pixels, resolution)
    x = image.astype(np.float32)
    darker = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    lines = darker[darker > 8]
    darker /= max(16.0, float(np.median(lines))) if lines.size else 16.0
    return unpad(rgb((darker * 127).clip(0, 255).astype(np.uint8)))


def tile_resample(pixels: Pixels, rate: float) -> Pixels:
    """The image shrunk by `rate` (area averaging); the unit's fitting scales it back up."""
    if rate < TILE_IDENTITY_BELOW:
        return pixels
    height, width = pixels.shape[:2]
    size = (max(1, int(width / rate)), max(1, int(height / rate)))
    return cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)


def color_grid(pixels: Pixels, resolution: int) -> Pixels:
    """T2I-Adapter's colour grid: the image at `resolution` (short side), averaged to one colour
    per 64x64 cell (cubic), blown back up in blocks (nearest)."""
    height, width = pixels.shape[:2]
    if height < width:
        size = (int(round(width / height * resolution)), resolution)
    else:
        size = (resolution, int(round(height / width * resolution)))
    image = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
    cells = (max(1, size[0] // 64), max(1, size[1] // 64))
    small = cv2.resize(image, cells, interpolation=cv2.INTER_CUBIC)
    return cv2.resize(small, size, interpolation=cv2.INTER_NEAREST)


def shuffle(pixels: Pixels, resolution: int, rng: np.random.RandomState) -> Pixels:
    """Content shuffle: the image warped by two smooth random fields (where each pixel takes
    its colour from). `rng` draws them as the extension's global numpy seed does."""
    image = scaled(pixels, resolution)
    height, width = image.shape[:2]
    x = _noise_disk(height, width, rng) * float(width - 1)
    y = _noise_disk(height, width, rng) * float(height - 1)
    flow = np.stack([x, y], axis=2).astype(np.float32)
    # a two-channel map1 needs no map2, which OpenCV's stubs do not allow for
    return cv2.remap(image, flow, None, cv2.INTER_LINEAR)  # type: ignore[call-overload]


def _noise_disk(height: int, width: int, rng: np.random.RandomState) -> Pixels:
    """Uniform noise on a coarse grid, cubic-upsampled and normalised to 0..1."""
    cell = SHUFFLE_CELL
    coarse = rng.uniform(low=0, high=1, size=(height // cell + 2, width // cell + 2, 1))
    grown = cv2.resize(coarse, (width + 2 * cell, height + 2 * cell), interpolation=cv2.INTER_CUBIC)
    noise = np.asarray(grown, dtype=np.float64)[cell : cell + height, cell : cell + width]
    noise = noise - np.min(noise)
    return noise / np.max(noise)


def recolor_luminance(pixels: Pixels, gamma: float) -> Pixels:
    """The lightness (Lab L) raised to `gamma`, as grey. The extension converts the RGB image
    as if it were BGR; so does this, so the maps agree."""
    lightness = cv2.cvtColor(pixels, cv2.COLOR_BGR2LAB)[:, :, 0]
    return rgb(_gamma(lightness, gamma))


def recolor_intensity(pixels: Pixels, gamma: float) -> Pixels:
    """The HSV value (the brightest channel) raised to `gamma`, as grey."""
    value = cv2.cvtColor(pixels, cv2.COLOR_BGR2HSV)[:, :, 2]
    return rgb(_gamma(value, gamma))


def _gamma(channel: Pixels, gamma: float) -> Pixels:
    return ((channel.astype(np.float32) / 255.0) ** gamma * 255.0).clip(0, 255).astype(np.uint8)
