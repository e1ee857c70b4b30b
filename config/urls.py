from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from config import views
from generation import merge_uploads, model_delivery, pricing_page, training_transfer
from generation.a1111.urls import controlnet_urlpatterns
from operations import views as operations_views

# JSON on API paths, the usual pages elsewhere (config/api_errors.py).
handler400 = "config.api_errors.bad_request"
handler403 = "config.api_errors.permission_denied"
handler404 = "config.api_errors.page_not_found"
handler500 = "config.api_errors.server_error"

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz", views.healthz, name="healthz"),
    # Workers fetch members' models here with a signed URL (generation.model_delivery).
    path("model-store/<str:token>", model_delivery.deliver, name="model-delivery"),
    # A training job's worker: dataset, resume state, finished epochs (generation.training_epochs).
    path("training-data/<str:token>", training_transfer.training_image, name="training-image"),
    path("training-state/<str:token>", training_transfer.training_state, name="training-state"),
    path("training-epoch/<str:token>", training_transfer.training_epoch, name="training-epoch"),
    # ... and send back the models they merged (generation.merge_uploads).
    path("model-store/merged/<str:token>", merge_uploads.receive_merged, name="merge-upload"),
    path("accounts/", include("accounts.urls")),
    path("pricing/", pricing_page.pricing, name="pricing"),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("gallery/", include("gallery.urls")),
    path("ops/", include("operations.urls")),
    path("metrics", operations_views.prometheus_metrics, name="metrics"),
    path("api/v1/", include("generation.api_urls")),
    re_path(r"^api/v1/(?P<rest>.*[^/])$", views.api_without_slash),
    path("sdapi/v1/", include("generation.a1111.urls")),
    path("controlnet/", include(controlnet_urlpatterns)),  # sd-webui-controlnet's endpoints
    path("", include("generation.image_urls")),
    path("", include("generation.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]
