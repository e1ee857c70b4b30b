"""Permission-checked image file URLs (included from config/urls.py at the site root)."""

from django.urls import path

from generation import image_files

urlpatterns = [
    path("images/<uuid:pk>/file", image_files.image_file, name="generation-image-file"),
    path("images/<uuid:pk>/thumb", image_files.image_thumbnail, name="generation-image-thumb"),
    path("catalogue/<int:pk>/preview", image_files.catalogue_preview, name="catalogue-preview"),
    path("jobs/<uuid:pk>/source", image_files.job_source, name="generation-job-source"),
    path("jobs/<uuid:pk>/mask", image_files.job_mask, name="generation-job-mask"),
    path(
        "jobs/<uuid:pk>/controlnet/<int:index>",
        image_files.job_control_image,
        name="generation-job-control-image",
    ),
]
