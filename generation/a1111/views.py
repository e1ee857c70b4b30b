"""/sdapi/v1/ views: authenticate, parse, call one function, answer JSON.

Every view is async. The generation views wait for their job in the event loop; the others run
their (short) synchronous work with sync_to_async. No view uses cookies, so CSRF does not apply:
credentials come in the Authorization header.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext as _
from django.views.decorators.csrf import csrf_exempt

from accounts.throttles import api_refusal_wait
from generation.a1111 import (
    catalog,
    controlnet,
    extras,
    options,
    png_info,
    progress,
    training,
    translation,
    waiting,
)
from generation.a1111.auth import authenticate
from generation.a1111.errors import A1111Error

Handler = Callable[[HttpRequest, Any, Any], Awaitable[Any]]
View = Callable[..., Coroutine[Any, Any, HttpResponse]]
TRUE_WORDS = ("true", "1", "yes")


def _body(request: HttpRequest) -> Any:
    if not request.body:
        return {}
    try:
        return json.loads(request.body)
    except (ValueError, UnicodeDecodeError):
        raise A1111Error(422, _("the request body is not valid JSON"), "body") from None


def endpoint(*methods: str) -> Callable[[Handler], View]:
    """Method check, authentication, JSON in and out, A1111-style errors."""

    def decorate(handler: Handler) -> View:
        @csrf_exempt
        @wraps(handler)
        async def view(request: HttpRequest) -> HttpResponse:
            try:
                if request.method not in methods:
                    response = A1111Error(405, _("Method Not Allowed")).response()
                    response["Allow"] = ", ".join(methods)
                    return response
                user = await authenticate(request)
                # The REST API's per-member rate (the tier's), counted in the same cache.
                wait = await sync_to_async(api_refusal_wait)(request, user)
                if wait is not None:
                    raise A1111Error(
                        429,
                        _("Request was throttled. Expected available in %(seconds)d seconds.")
                        % {"seconds": wait},
                        retry_after=wait,
                    )
                body = _body(request) if request.method == "POST" else None
                result = await handler(request, user, body)
            except A1111Error as exc:
                return exc.response()
            return JsonResponse(result, safe=False)

        return view

    return decorate


def _sync(function: Callable[..., Any]) -> Handler:
    """A handler that runs `function(user)` in a thread."""

    async def handler(request: HttpRequest, user: Any, body: Any) -> Any:
        return await sync_to_async(function)(user)

    return handler


@endpoint("POST")
async def txt2img(request: HttpRequest, user: Any, body: Any) -> Any:
    translated = await sync_to_async(translation.translate)(user, body, "txt2img")
    return await waiting.generate(user, translated)


@endpoint("POST")
async def img2img(request: HttpRequest, user: Any, body: Any) -> Any:
    translated = await sync_to_async(translation.translate)(user, body, "img2img")
    return await waiting.generate(user, translated)


@endpoint("POST")
async def extra_single_image(request: HttpRequest, user: Any, body: Any) -> Any:
    return await extras.run(user, extras.single_requests(body), batch=False)


@endpoint("POST")
async def extra_batch_images(request: HttpRequest, user: Any, body: Any) -> Any:
    return await extras.run(user, extras.batch_requests(body), batch=True)


@endpoint("GET")
async def progress_view(request: HttpRequest, user: Any, body: Any) -> Any:
    skip_image = request.GET.get("skip_current_image", "false").lower() in TRUE_WORDS
    task_id = request.GET.get("id_task") or None
    return await sync_to_async(progress.progress_for)(user, skip_image, task_id)


@endpoint("POST")
async def interrupt(request: HttpRequest, user: Any, body: Any) -> Any:
    await sync_to_async(progress.interrupt)(user)
    return {}


@endpoint("POST")
async def skip(request: HttpRequest, user: Any, body: Any) -> Any:
    await sync_to_async(progress.skip)(user)
    return None


@endpoint("GET", "POST")
async def options_view(request: HttpRequest, user: Any, body: Any) -> Any:
    if request.method == "POST":
        await sync_to_async(options.set_options)(user, body)
        return None
    return await sync_to_async(options.get_options)(user)


@endpoint("POST")
async def png_info_view(request: HttpRequest, user: Any, body: Any) -> Any:
    return await sync_to_async(png_info.png_info)(body)


@endpoint("POST")
async def train_embedding(request: HttpRequest, user: Any, body: Any) -> Any:
    return await sync_to_async(training.train_embedding)(user, body)


@endpoint("POST")
async def create_embedding(request: HttpRequest, user: Any, body: Any) -> Any:
    training.refuse_create(body)


@endpoint("POST")
async def refresh(request: HttpRequest, user: Any, body: Any) -> Any:
    # Hashing new files can take a while: off the request's own thread, like the rest.
    await sync_to_async(options.refresh_catalogue)(user)
    return None


sd_models = endpoint("GET")(_sync(catalog.sd_models))
loras = endpoint("GET")(_sync(catalog.loras))
sd_vae = endpoint("GET")(_sync(catalog.sd_vaes))
embeddings = endpoint("GET")(_sync(catalog.embeddings))
memory = endpoint("GET")(_sync(options.memory))
samplers = endpoint("GET")(_sync(lambda user: catalog.samplers()))
schedulers = endpoint("GET")(_sync(lambda user: catalog.schedulers()))
upscalers = endpoint("GET")(_sync(catalog.upscalers))
face_restorers = endpoint("GET")(_sync(catalog.face_restorers))
latent_upscale_modes = endpoint("GET")(_sync(lambda user: catalog.latent_upscale_modes()))
prompt_styles = endpoint("GET")(_sync(catalog.prompt_styles))
scripts = endpoint("GET")(_sync(controlnet.scripts))
# sd-webui-controlnet's own endpoints (under /controlnet/, not /sdapi/v1/)
controlnet_model_list = endpoint("GET")(_sync(controlnet.model_list))
controlnet_module_list = endpoint("GET")(_sync(lambda user: controlnet.module_list()))
controlnet_version = endpoint("GET")(_sync(lambda user: controlnet.version()))


@endpoint("POST")
async def controlnet_detect(request: HttpRequest, user: Any, body: Any) -> Any:
    return await sync_to_async(controlnet.detect)(user, body)
