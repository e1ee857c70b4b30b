from django.urls import path

from generation.a1111 import views

urlpatterns = [
    path("txt2img", views.txt2img, name="sdapi-txt2img"),
    path("img2img", views.img2img, name="sdapi-img2img"),
    path("extra-single-image", views.extra_single_image, name="sdapi-extra-single-image"),
    path("extra-batch-images", views.extra_batch_images, name="sdapi-extra-batch-images"),
    path("progress", views.progress_view, name="sdapi-progress"),
    path("interrupt", views.interrupt, name="sdapi-interrupt"),
    path("skip", views.skip, name="sdapi-skip"),
    path("options", views.options_view, name="sdapi-options"),
    path("sd-models", views.sd_models, name="sdapi-sd-models"),
    path("samplers", views.samplers, name="sdapi-samplers"),
    path("schedulers", views.schedulers, name="sdapi-schedulers"),
    path("loras", views.loras, name="sdapi-loras"),
    path("sd-vae", views.sd_vae, name="sdapi-sd-vae"),
    path("embeddings", views.embeddings, name="sdapi-embeddings"),
    path("upscalers", views.upscalers, name="sdapi-upscalers"),
    path("face-restorers", views.face_restorers, name="sdapi-face-restorers"),
    path("latent-upscale-modes", views.latent_upscale_modes, name="sdapi-latent-upscale-modes"),
    path("prompt-styles", views.prompt_styles, name="sdapi-prompt-styles"),
    path("png-info", views.png_info_view, name="sdapi-png-info"),
    path("refresh-checkpoints", views.refresh, name="sdapi-refresh-checkpoints"),
    path("refresh-loras", views.refresh, name="sdapi-refresh-loras"),
    path("memory", views.memory, name="sdapi-memory"),
    path("scripts", views.scripts, name="sdapi-scripts"),
    path("train/embedding", views.train_embedding, name="sdapi-train-embedding"),
    path("create/embedding", views.create_embedding, name="sdapi-create-embedding"),
]
# sd-webui-controlnet's endpoints, mounted at /controlnet/ (config/urls.py)
controlnet_urlpatterns = [
    path("version", views.controlnet_version, name="controlnet-version"),
    path("model_list", views.controlnet_model_list, name="controlnet-model-list"),
    path("module_list", views.controlnet_module_list, name="controlnet-module-list"),
    path("detect", views.controlnet_detect, name="controlnet-detect"),
]
