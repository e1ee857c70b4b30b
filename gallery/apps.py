from django.apps import AppConfig
from django.utils.translation import gettext_lazy as _


class GalleryConfig(AppConfig):
    name = "gallery"
    verbose_name = _("Gallery")

    def ready(self) -> None:
        # Pillow's decompression-bomb limit for every image this process opens (PNG Info
        # uploads, img2img sources): beyond it Pillow warns, beyond twice it refuses.
        from PIL import Image

        from gallery.png_info import MAX_IMAGE_PIXELS

        Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
