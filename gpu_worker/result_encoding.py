"""A finished image as the worker reports it, made off the sampling thread.

Writing the PNG (zlib at Pillow's default level, as A1111 saves) takes far longer than a GPU
takes to decode the latents: measured on the development machine, 23-63 ms for a 512 px image
and 85-300 ms for a 1024 px one, while at the ~105 it/s published for SD 1.5 at 512 px on an
H100, 20 steps take about 0.2 s. Done on the sampling thread, the GPU waits for it. Pillow
releases the GIL while it compresses, so the encoder's threads run beside the next iteration's
sampling, or beside the other jobs of a cross-user batch, and a batch's images are written in
parallel.

The thumbnail (`gpu_worker.thumbnails`) is made here too, from the image already in memory, so
that the platform checks the PNG instead of decoding it again.
"""

from __future__ import annotations

import base64
import os
from concurrent.futures import Future, ThreadPoolExecutor

from PIL import Image

from gpu_worker import infotext as infotext_mod
from gpu_worker.protocol import ResultImage
from gpu_worker.thumbnails import thumbnail_webp

# A GPU host has cores to spare; a batch of up to 8 images needs no more than a few of them.
MAX_DEFAULT_THREADS = 4


def default_encode_threads() -> int:
    return min(MAX_DEFAULT_THREADS, os.cpu_count() or 1)


def encode_result_image(
    image: Image.Image, seed: int, infotext: str, *, raw_png: bool = False
) -> ResultImage:
    """A PNG carrying its infotext (A1111's `parameters` chunk) and its thumbnail. `raw_png`:
    the PNG's bytes kept as they are (`png`), for the event to carry through Redis
    (`gpu_worker.result_store`), not as base64."""
    png = infotext_mod.png_with_infotext(image, infotext)
    return packed_result(image, png, seed, infotext, raw_png=raw_png)


def packed_result(
    image: Image.Image, png: bytes, seed: int, infotext: str, *, raw_png: bool
) -> ResultImage:
    """A result image as the worker reports it: its PNG (bytes with `raw_png`, else base64),
    its size and the gallery's thumbnail made from `image`."""
    packed = ResultImage(
        seed=seed,
        infotext=infotext,
        width=image.width,
        height=image.height,
        thumbnail_webp_b64=base64.b64encode(thumbnail_webp(image)).decode("ascii"),
    )
    if raw_png:
        packed["png"] = png
    else:
        packed["png_b64"] = base64.b64encode(png).decode("ascii")
    return packed


class ResultEncoder:
    """Encodes result images on `threads` threads (0: at once, on the caller's thread). The
    caller must not change an image after handing it in."""

    def __init__(self, threads: int | None = None) -> None:
        self.threads = default_encode_threads() if threads is None else max(0, threads)
        self._pool = (
            ThreadPoolExecutor(self.threads, thread_name_prefix="result-encoder")
            if self.threads
            else None
        )

    def submit(
        self, image: Image.Image, seed: int, infotext: str, *, raw_png: bool = False
    ) -> Future[ResultImage]:
        if self._pool is not None:
            return self._pool.submit(encode_result_image, image, seed, infotext, raw_png=raw_png)
        done: Future[ResultImage] = Future()
        try:
            done.set_result(encode_result_image(image, seed, infotext, raw_png=raw_png))
        except Exception as exc:
            done.set_exception(exc)
        return done

    def shutdown(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
