"""Page URLs of the generation app (the REST API and image files are routed elsewhere)."""

from django.urls import path

from generation import job_views, own_model_views, views

urlpatterns = [
    path("generate/", views.generate, name="generate"),
    path("models/mine/", own_model_views.own_models, name="own-models"),
    path("images/", views.my_images, name="my_images"),
    path("images/<uuid:pk>/", views.image_detail, name="image_detail"),
    path("images/<uuid:pk>/delete/", views.image_delete, name="image_delete"),
]
urlpatterns += [
    path("jobs/", job_views.my_jobs, name="my_jobs"),
    path("jobs/<uuid:pk>/", job_views.job_detail, name="job_detail"),
    path("jobs/<uuid:pk>/summary/", job_views.job_summary, name="job_summary"),
]
