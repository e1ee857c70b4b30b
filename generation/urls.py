"""Page URLs of the generation app (the REST API and image files are routed elsewhere)."""

from django.urls import path

from generation import job_views, merge_views, own_model_views, styles_views, views

urlpatterns = [
    path("generate/", views.generate, name="generate"),
    path("models/mine/", own_model_views.own_models, name="own-models"),
    path("models/mine/<int:pk>/", merge_views.own_model, name="own-model"),
    path("models/mine/<int:pk>/bake/", merge_views.bake, name="own-model-bake"),
    path("models/merge/", merge_views.merge_page, name="merge"),
    path("images/", views.my_images, name="my_images"),
    path("images/<uuid:pk>/", views.image_detail, name="image_detail"),
    path("images/<uuid:pk>/delete/", views.image_delete, name="image_delete"),
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
