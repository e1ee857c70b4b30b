from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _
from PIL import Image

from generation.image_limits import MAX_IMAGE_PIXELS


class GenerationConfig(AppConfig):
    name = "generation"
    verbose_name = _("Generation")

    def ready(self) -> None:
        # Pillow's decompression-bomb limit for every image this process opens (PNG Info
        # uploads, img2img sources): beyond it Pillow warns, beyond twice it refuses.
        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
