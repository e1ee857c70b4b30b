"""REST API v1 routes (included from config/urls.py under api/v1/)."""

from django.urls import path

from generation import (
    api,
    controlnet_api,
    extras_api,
    merge_api,
    model_uploads,
    styles_api,
    tokens_api,
    training_api,
)

uploads = model_uploads.ModelUploadViewSet

training = training_api
urlpatterns = [
    # LoRA training: datasets and jobs (generation.training_api)
    path("training/datasets/", training.DatasetListView.as_view(), name="api-training-datasets"),
    path(
        "training/datasets/<int:pk>/",
        training.DatasetDetailView.as_view(),
        name="api-training-dataset",
    ),
    path(
        "training/datasets/<int:pk>/images/",
        training.DatasetImagesView.as_view(),
        name="api-training-dataset-images",
    ),
    path(
        "training/datasets/<int:pk>/images/<int:image_pk>/",
        training.DatasetImageView.as_view(),
        name="api-training-image",
    ),
    path(
        "training/datasets/<int:pk>/images/<int:image_pk>/file/",
        training.DatasetImageFileView.as_view(),
        name="api-training-image-file",
    ),
    path("training/jobs/", training.TrainingJobListView.as_view(), name="api-training-jobs"),
    path("training/jobs/quote/", training.TrainingQuoteView.as_view(), name="api-training-quote"),
    path(
        "training/jobs/<uuid:pk>/",
        training.TrainingJobDetailView.as_view(),
        name="api-training-job",
    ),
    path(
        "training/jobs/<uuid:pk>/epochs/<int:epoch>/lora/",
        training.EpochLoraView.as_view(),
        name="training-epoch-lora",
    ),
    path(
        "training/jobs/<uuid:pk>/epochs/<int:epoch>/sample/",
        training.EpochSampleView.as_view(),
        name="training-epoch-sample",
    ),
    path("jobs/", api.JobListCreateView.as_view(), name="api-jobs"),
    path("jobs/quote/", api.JobQuoteView.as_view(), name="api-job-quote"),
    path("jobs/<uuid:pk>/", api.JobDetailView.as_view(), name="api-job"),
    path("jobs/<uuid:pk>/cancel/", api.JobCancelView.as_view(), name="api-job-cancel"),
    path("extras/", extras_api.ExtrasCreateView.as_view(), name="api-extras"),
    path("extras/quote/", extras_api.ExtrasQuoteView.as_view(), name="api-extras-quote"),
    path("models/", api.ModelListView.as_view(), name="api-models"),
    path("loras/", api.LoraListView.as_view(), name="api-loras"),
    path("vaes/", api.VaeListView.as_view(), name="api-vaes"),
    path("upscalers/", api.UpscalerListView.as_view(), name="api-upscalers"),
    path("samplers/", api.SamplerListView.as_view(), name="api-samplers"),
    path("me/", api.MeView.as_view(), name="api-me"),
    path("images/", api.ImageListView.as_view(), name="api-images"),
    path("images/<uuid:pk>/", api.ImageDetailView.as_view(), name="api-image"),
    path("own-models/", model_uploads.OwnModelListView.as_view(), name="api-own-models"),
    path("own-models/<int:pk>/", model_uploads.OwnModelDetailView.as_view(), name="api-own-model"),
    path("own-models/<int:pk>/bake/", merge_api.BakeView.as_view(), name="api-own-model-bake"),
    path("merges/", merge_api.MergeCreateView.as_view(), name="api-merges"),
    path("merges/virtual/", merge_api.VirtualMergeView.as_view(), name="api-merges-virtual"),
    path("merges/options/", merge_api.MergeOptionsView.as_view(), name="api-merges-options"),
    path(
        "own-models/<int:pk>/preview/",
        model_uploads.OwnModelPreviewView.as_view(),
        name="api-own-model-preview",
    ),
    path(
        "own-models/uploads/",
        uploads.as_view({"post": "create", "get": "list"}),
        name="api-model-uploads",
    ),
    path(
        "own-models/uploads/<uuid:guid>/",
        uploads.as_view(
            {"get": "retrieve", "patch": "partial_update", "delete": "destroy", "head": "info"}
        ),
        name="api-model-upload-detail",
    ),
    path("settings/default-model/", api.DefaultModelView.as_view(), name="api-default-model"),
    path("styles/", styles_api.StyleListView.as_view(), name="api-styles"),
    path("styles/export/", styles_api.StyleExportView.as_view(), name="api-styles-export"),
    path("styles/import/", styles_api.StyleImportView.as_view(), name="api-styles-import"),
    path("styles/<int:pk>/", styles_api.StyleDetailView.as_view(), name="api-style"),
    path("tokens/", tokens_api.TokenCountView.as_view(), name="api-tokens"),
    path(
        "controlnet/preprocessors/",
        controlnet_api.PreprocessorListView.as_view(),
        name="api-controlnet-preprocessors",
    ),
    path("controlnet/detect/", controlnet_api.DetectView.as_view(), name="api-controlnet-detect"),
]
