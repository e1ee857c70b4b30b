"""REST API v1 routes (included from config/urls.py under api/v1/)."""

from django.urls import path

from generation import api, styles_api, tokens_api

urlpatterns = [
    path("jobs/", api.JobListCreateView.as_view(), name="api-jobs"),
    path("jobs/quote/", api.JobQuoteView.as_view(), name="api-job-quote"),
    path("jobs/<uuid:pk>/", api.JobDetailView.as_view(), name="api-job"),
    path("jobs/<uuid:pk>/cancel/", api.JobCancelView.as_view(), name="api-job-cancel"),
    path("models/", api.ModelListView.as_view(), name="api-models"),
    path("loras/", api.LoraListView.as_view(), name="api-loras"),
    path("vaes/", api.VaeListView.as_view(), name="api-vaes"),
    path("upscalers/", api.UpscalerListView.as_view(), name="api-upscalers"),
    path("samplers/", api.SamplerListView.as_view(), name="api-samplers"),
    path("me/", api.MeView.as_view(), name="api-me"),
    path("images/", api.ImageListView.as_view(), name="api-images"),
    path("images/<uuid:pk>/", api.ImageDetailView.as_view(), name="api-image"),
    path("settings/default-model/", api.DefaultModelView.as_view(), name="api-default-model"),
    path("styles/", styles_api.StyleListView.as_view(), name="api-styles"),
    path("styles/export/", styles_api.StyleExportView.as_view(), name="api-styles-export"),
    path("styles/import/", styles_api.StyleImportView.as_view(), name="api-styles-import"),
    path("styles/<int:pk>/", styles_api.StyleDetailView.as_view(), name="api-style"),
    path("tokens/", tokens_api.TokenCountView.as_view(), name="api-tokens"),
]
