"""Limits on the images people hand us to read (PNG Info uploads, the A1111 png-info endpoint,
img2img sources): shared by generation's and the gallery's readers."""

from __future__ import annotations

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Pillow's decompression-bomb guard (set in GenerationConfig.ready): larger images are refused.
MAX_IMAGE_PIXELS = 8192 * 8192
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
