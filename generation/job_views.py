"""The "My jobs" list and one job's page: status, cost, timings, ledger; the member's own only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse

from accounts.ledger import account_for
from generation.inpaint_form import job_inputs
from generation.job_history import Spent, charged, job_ledger, member_jobs, models_used
from generation.lifecycle import image_payload
from generation.models import CatalogEntry, Job
from generation.templatetags.durations import duration
from gpu_worker.infotext import controlnet_unit_text

if TYPE_CHECKING:  # django-stubs' helper, a dev dependency
    from django_stubs_ext import WithAnnotations

JOBS_PER_PAGE = 25


@login_required
def my_jobs(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", "")
    model = request.GET.get("model", "")
    jobs = member_jobs(request.user, status=status, model=model)
    page = Paginator(jobs, JOBS_PER_PAGE).get_page(request.GET.get("page"))
    return render(
        request,
        "generation/my_jobs.html",
        {
            "page": page,
            "status": status,
            "model": model,
            "statuses": Job.Status.choices,
            "models_used": models_used(request.user),
            "query_string": urlencode(
                {k: v for k, v in (("status", status), ("model", model)) if v}
            ),
        },
    )


@login_required
def job_detail(request: HttpRequest, pk: Any) -> HttpResponse:
    # Someone else's job is a 404, as if it did not exist (staff use the admin).
    job = get_object_or_404(member_jobs(request.user), pk=pk)
    entries = list(job_ledger(request.user, job))
    images = [(image, image_payload(image)) for image in job.images.order_by("index")]
    return render(
        request,
        "generation/job_detail.html",
        {
            "job": job,
            "params": _shown_params(job.params, _controlnet_titles(request.user, job.params)),
            "images": images,
            "entries": entries,
            "charged": charged(entries),
            "job_inputs": job_inputs(job),
            "merge": job.params.get("merge") if job.mode == Job.Mode.MERGE else None,
            "merged_model": merged_model(request.user, job),
        },
    )


def merged_model(user: Any, job: Job) -> CatalogEntry | None:
    """The model a finished merge job wrote (its owner's, by the name it was given)."""
    if job.mode != Job.Mode.MERGE or job.status != Job.Status.SUCCEEDED:
        return None
    name = job.params["merge"]["name"]
    return CatalogEntry.objects.members_own(user).filter(name=name, kind="checkpoint").first()


@login_required
def job_summary(request: HttpRequest, pk: Any) -> JsonResponse:
    """What the generator's Done/Cancelled panel adds: the charge, the times, the new balance."""
    job: WithAnnotations[Job, Spent] = get_object_or_404(member_jobs(request.user), pk=pk)
    return JsonResponse(
        {
            "status": job.status,
            "charged": f"{job.credits_spent:.2f}",
            "duration": duration(job.run_time),
            "queue_wait": duration(job.queue_wait),
            "balance": f"{account_for(request.user).balance:.2f}",
            "url": reverse("job_detail", args=[job.pk]),
        }
    )


def _controlnet_titles(user: Any, params: dict[str, Any]) -> dict[str, str]:
    """ "name [hash]" of the job's ControlNets, as the images' infotexts write them."""
    names = {unit["model"] for unit in params.get("controlnet") or ()}
    if not names:
        return {}
    entries = CatalogEntry.objects.usable_by(user).filter(
        kind=CatalogEntry.Kind.CONTROLNET, name__in=names
    )
    return {e.name: f"{e.name} [{e.sha256[:8]}]" for e in entries}


def _shown_params(params: dict[str, Any], titles: dict[str, str]) -> list[tuple[str, Any]]:
    if params.get("mode") == "extras":  # an upscale: its own options and the size it makes
        extras = params.get("extras") or {}
        return [("width", params["width"]), ("height", params["height"]), *sorted(extras.items())]
    hidden = {"prompt", "negative_prompt", "init_image", "controlnet"}
    shown = [(key, value) for key, value in sorted(params.items()) if key not in hidden]
    units = params.get("controlnet") or []  # as sd-webui-controlnet writes them in infotexts
    return shown + [
        (f"ControlNet {i}", controlnet_unit_text(unit, titles.get(unit["model"], unit["model"])))
        for i, unit in enumerate(units)
    ]
