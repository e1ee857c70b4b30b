"""Inpainting geometry in pixels (Pillow only, no torch): what A1111's img2img does with a mask.

The platform reads masks with it (to refuse an empty one before a job is made) and the engine
plans each inpaint pass with it: which canvas is denoised at which size, with which latent mask,
and how the result goes back over the original so that every pixel outside the (blurred) mask
is the original's. Semantics follow A1111's modules/processing.py and modules/masking.py
(mask white = repaint; "only masked" crops the mask's box plus padding, widened to the job's
aspect ratio, and denoises it at the job's size); the code is our own. ControlNet units' images
are lined up with a plan here too (`control_view`), so a unit guides the pixels it covers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image, ImageFilter, ImageOps

from gpu_worker.params import InpaintParams

MASK_THRESHOLD = 128  # A1111 rounds a mask: above this repaints


def binary_mask(image: Image.Image) -> Image.Image:
    """An uploaded mask as black/white "L": its alpha channel when it has transparency (painted
    strokes over a transparent layer, as editors send them), else its brightness."""
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        alpha = rgba.getchannel("A")
        if alpha.getextrema() != (255, 255):
            return _threshold(alpha)
        image = rgba
    return _threshold(image.convert("L"))


def _threshold(mask: Image.Image) -> Image.Image:
    return mask.point(lambda v: 255 if v > MASK_THRESHOLD else 0)


def prepare_mask(mask: Image.Image, size: tuple[int, int], invert: bool) -> Image.Image:
    """Binary mask at the source's size (a mask of another size is stretched to it), inverted
    when asked."""
    mask = binary_mask(mask)
    if mask.size != size:
        mask = _threshold(mask.resize(size, Image.Resampling.LANCZOS))
    return ImageOps.invert(mask) if invert else mask


def outpaint_sides(inpaint: InpaintParams | None) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) pixels the canvas grows by."""
    if not inpaint:
        return 0, 0, 0, 0
    return (
        int(inpaint.get("outpaint_left") or 0),
        int(inpaint.get("outpaint_top") or 0),
        int(inpaint.get("outpaint_right") or 0),
        int(inpaint.get("outpaint_bottom") or 0),
    )


def extend_canvas(
    image: Image.Image, mask: Image.Image, sides: tuple[int, int, int, int]
) -> tuple[Image.Image, Image.Image]:
    """Outpainting: grow the canvas; the new area joins the mask and starts as the image's edge
    pixels stretched outward (a neutral start for "original"; other fills replace it)."""
    left, top, right, bottom = sides
    if not any(sides):
        return image, mask
    width, height = image.width + left + right, image.height + top + bottom
    canvas = _stretched_edges(image, sides)
    canvas.paste(image, (left, top))
    grown = Image.new("L", (width, height), 255)
    grown.paste(mask, (left, top))
    return canvas, grown


def _stretched_edges(image: Image.Image, sides: tuple[int, int, int, int]) -> Image.Image:
    left, top, right, bottom = sides
    w, h = image.width, image.height
    canvas = Image.new("RGB", (w + left + right, h + top + bottom))
    # Each border band repeats the image's outermost row or column; corners its corner pixel.
    bands = (
        ((0, 0, 1, h), (left, h), (0, top)),
        ((w - 1, 0, w, h), (right, h), (left + w, top)),
        ((0, 0, w, 1), (w, top), (left, 0)),
        ((0, h - 1, w, h), (w, bottom), (left, top + h)),
    )
    for box, size, at in bands:
        if size[0] and size[1]:
            canvas.paste(image.crop(box).resize(size, Image.Resampling.NEAREST), at)
    for x, y, px, py, size in (
        (0, 0, 0, 0, (left, top)),
        (left + w, 0, w - 1, 0, (right, top)),
        (0, top + h, 0, h - 1, (left, bottom)),
        (left + w, top + h, w - 1, h - 1, (right, bottom)),
    ):
        if size[0] and size[1]:
            canvas.paste(Image.new("RGB", size, image.getpixel((px, py))), (x, y))
    return canvas


def blur_mask(mask: Image.Image, blur_x: int, blur_y: int) -> Image.Image:
    """A1111's mask blur: a Gaussian of that many pixels along each axis."""
    if blur_x <= 0 and blur_y <= 0:
        return mask
    return mask.filter(ImageFilter.GaussianBlur((max(blur_x, 0), max(blur_y, 0))))


def crop_region(mask: Image.Image, padding: int) -> tuple[int, int, int, int] | None:
    """The box of the mask's non-black pixels grown by `padding`, inside the image."""
    box = mask.getbbox()
    if box is None:
        return None
    x1, y1, x2, y2 = box
    return (
        max(x1 - padding, 0),
        max(y1 - padding, 0),
        min(x2 + padding, mask.width),
        min(y2 + padding, mask.height),
    )


def expand_to_ratio(
    box: tuple[int, int, int, int], width: int, height: int, image_w: int, image_h: int
) -> tuple[int, int, int, int]:
    """Widen the box on its short axis, centred and kept inside the image where it fits, until
    it has the aspect ratio width:height (the crop is then resized without distortion)."""
    x1, y1, x2, y2 = box
    if (x2 - x1) * height > (y2 - y1) * width:
        y1, y2 = _grow(y1, y2, math.ceil((x2 - x1) * height / width), image_h)
    else:
        x1, x2 = _grow(x1, x2, math.ceil((y2 - y1) * width / height), image_w)
    return x1, y1, x2, y2


def _grow(low: int, high: int, wanted: int, limit: int) -> tuple[int, int]:
    extra = wanted - (high - low)
    low, high = low - extra // 2, high + extra - extra // 2
    if high > limit:
        low, high = low - (high - limit), limit
    if low < 0:
        high, low = min(high - low, limit), 0
    return low, high


def fill_masked(image: Image.Image, mask: Image.Image) -> Image.Image:
    """Masked content "fill": the masked area painted with the colours around it, blurred from
    coarse to fine (A1111's inpainting_fill 0)."""
    hole = _threshold(mask)
    keep = ImageOps.invert(hole)
    if keep.getbbox() is None:
        return image
    known = image.convert("RGBA")
    known.putalpha(keep)
    filled = Image.new("RGBA", image.size, (127, 127, 127, 255))
    for radius in (256, 64, 16, 4, 1):
        # Blurring premultiplied colour spreads only known pixels' colours into the hole.
        layer = known.convert("RGBa").filter(ImageFilter.GaussianBlur(radius)).convert("RGBA")
        filled.alpha_composite(layer)
    filled.paste(image.convert("RGBA"), mask=keep)
    return filled.convert("RGB")


@dataclass
class InpaintPlan:
    """One inpaint pass: denoise `image` at its size under `mask`; then `paste_back`."""

    image: Image.Image  # what the sampler starts from (the job's size, or the canvas's)
    mask: Image.Image  # "L", image's size: white is denoised (blurred, A1111's latent mask)
    base: Image.Image  # the original canvas the result goes back onto
    overlay: Image.Image  # "L", base's size: how much of the result shows at each pixel
    crop: tuple[int, int, int, int] | None  # "only masked": where on base the pass was cut from

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size


def plan_inpaint(
    source: Image.Image,
    mask: Image.Image,
    inpaint: InpaintParams,
    width: int,
    height: int,
    resize: Callable[[Image.Image, int, int, int], Image.Image],  # engine.resize_image
    resize_mode: int,
) -> InpaintPlan:
    """A1111's img2img with a mask. "Whole picture": source and mask take the job's size
    (resize_mode), outpainting grows that canvas, and the canvas is denoised. "Only masked":
    the source keeps its own size (grown by outpainting), and the mask's box plus padding,
    widened to width:height, is denoised at width x height."""
    mask = prepare_mask(mask, source.size, bool(inpaint["inpainting_mask_invert"]))
    sides = outpaint_sides(inpaint)
    blur = int(inpaint["mask_blur_x"]), int(inpaint["mask_blur_y"])
    if inpaint["inpaint_full_res"]:
        base, mask = extend_canvas(source.convert("RGB"), mask, sides)
        blurred = blur_mask(mask, *blur)
        box = crop_region(blurred, int(inpaint["inpaint_full_res_padding"]))
        if box is None:
            box = (0, 0, base.width, base.height)
        box = expand_to_ratio(box, width, height, base.width, base.height)
        image = resize(base.crop(box), width, height, 2)
        latent_mask = resize(blurred.crop(box), width, height, 2)
        overlay = blurred
    else:
        image = resize(source.convert("RGB"), width, height, resize_mode)
        if any(sides):  # blurred on the grown canvas, so the seam to the new area is soft too
            mask = _threshold(resize(mask, width, height, resize_mode))
            base, mask = extend_canvas(image, mask, sides)
            latent_mask = blur_mask(mask, *blur)
        else:  # A1111: blurred at the source's size, then resized with the image
            base = image
            latent_mask = resize(blur_mask(mask, *blur), width, height, resize_mode)
        image = base
        # A1111 doubles the blurred mask for the overlay: the repainted area reaches the blur's
        # middle, and the blur's outer half fades into the original.
        overlay = latent_mask.point(lambda v: min(255, v * 2))
        box = None
    if int(inpaint["inpainting_fill"]) == 0:
        image = fill_masked(image, latent_mask)
    return InpaintPlan(image=image, mask=latent_mask, base=base, overlay=overlay, crop=box)


def whole_image_plan(image: Image.Image) -> InpaintPlan:
    """Everything repainted: how a 9-channel inpaint checkpoint runs plain txt2img (from a grey
    canvas) and img2img (from the source), as A1111 runs them, with a full mask."""
    white = Image.new("L", image.size, 255)
    return InpaintPlan(image=image, mask=white, base=image, overlay=white, crop=None)


Resize = Callable[[Image.Image, int, int, int], Image.Image]  # (image, width, height, mode)


def control_view(
    plan: InpaintPlan, image: Image.Image, resize_mode: int, fit: Resize, resize: Resize
) -> Image.Image:
    """A ControlNet unit's image lined up with the pass, so the unit guides the pixels it
    covers: fitted to the canvas the job paints on as the unit's resize_mode asks (`fit`),
    then, for "only masked", cut to the pass's crop and brought to the pass's size the way the
    source was (`resize`, the plan's)."""
    canvas = fit(image, plan.base.width, plan.base.height, resize_mode)
    if plan.crop is None:  # whole picture: the canvas is what the pass denoises
        return canvas
    return resize(canvas.crop(plan.crop), plan.size[0], plan.size[1], 2)


def paste_back(plan: InpaintPlan, generated: Image.Image) -> Image.Image:
    """The denoised pass over the original: outside the overlay every pixel is the base's."""
    full = generated.convert("RGB")
    if plan.crop is not None:
        x1, y1, x2, y2 = plan.crop
        patch = full.resize((x2 - x1, y2 - y1), Image.Resampling.LANCZOS)
        full = plan.base.copy()
        full.paste(patch, (x1, y1))
    return Image.composite(full, plan.base, plan.overlay)


def mask_is_empty(mask: Image.Image) -> bool:
    """Nothing to repaint: no pixel above the threshold."""
    return _threshold(mask).getbbox() is None
