"""Page URLs of the generation app (the REST API and image files are routed elsewhere)."""

from django.urls import path

from generation import (
    extras_views,
    job_views,
    merge_views,
    own_model_views,
    styles_views,
    training_views,
    views,
)

urlpatterns = [
    path("generate/", views.generate, name="generate"),
    path("models/mine/", own_model_views.own_models, name="own-models"),
    path("models/mine/<int:pk>/", own_model_views.own_model, name="own-model"),
    path("models/mine/<int:pk>/delete/", own_model_views.own_model_delete, name="own-model-delete"),
    path("models/mine/<int:pk>/bake/", merge_views.bake, name="own-model-bake"),
    path("models/merge/", merge_views.merge_page, name="merge"),
    path("images/", views.my_images, name="my_images"),
    path("images/<uuid:pk>/", views.image_detail, name="image_detail"),
    path("images/<uuid:pk>/delete/", views.image_delete, name="image_delete"),
    path("images/<uuid:pk>/upscale/", extras_views.image_upscale, name="image_upscale"),
    path("styles/", styles_views.my_styles, name="my_styles"),
    path("styles/<int:pk>/delete/", styles_views.style_delete, name="style_delete"),
    path("styles/import/", styles_views.styles_import, name="styles_import"),
    path("styles/export/", styles_views.styles_export, name="styles_export"),
]
urlpatterns += [
    path("jobs/", job_views.my_jobs, name="my_jobs"),
    path("jobs/<uuid:pk>/", job_views.job_detail, name="job_detail"),
    path("jobs/<uuid:pk>/summary/", job_views.job_summary, name="job_summary"),
]
urlpatterns += [
    path("training/", training_views.training_home, name="training"),
    path("training/datasets/", training_views.dataset_upload, name="training_dataset_upload"),
    path("training/datasets/<int:pk>/", training_views.dataset_page, name="training_dataset"),
    path("training/datasets/<int:pk>/train/", training_views.training_start, name="training_start"),
    path("training/jobs/<uuid:pk>/", training_views.training_job, name="training_job"),
    path("training/jobs/<uuid:pk>/cancel/", training_views.training_cancel, name="training_cancel"),
]
