from __future__ import annotations

import hmac
from datetime import datetime

from django.conf import settings
from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseBadRequest
from django.shortcuts import redirect, render
from django.utils import timezone
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from generation.broker import get_redis
from generation.fleet import read_workers
from gpu_worker.protocol import WorkerCommand
from operations import metrics, prometheus
from operations.charts import Chart, bar_chart
from operations.credit_metrics import CreditDay
from operations.workers import send_worker_command


@staff_member_required
def ops_overview(request: HttpRequest) -> HttpResponse:
    data = metrics.overview()
    charts = {
        "chart": hourly_chart(data["jobs_per_hour"], _("jobs")),
        "loads_chart": hourly_chart(data["model_loads_per_hour"], _("loads")),
        "credits_chart": credits_chart(data["credits_per_day"]),
    }
    return render(request, "operations/overview.html", {**data, **charts})


def hourly_chart(per_hour: list[tuple[datetime, int]], unit: str) -> Chart:
    labels = [timezone.localtime(hour).strftime("%H:00") for hour, _n in per_hour]
    return bar_chart(labels, {unit: [n for _hour, n in per_hour]}, unit=unit, label_every=3)


def credits_chart(days: list[CreditDay]) -> Chart:
    """Every series of the table below it, on one scale."""
    return bar_chart(
        [day.day.strftime("%m-%d") for day in days],
        {
            _("Spent"): [float(day.spent) for day in days],
            _("Refunded"): [float(day.refunded) for day in days],
            _("Bought"): [float(day.bought) for day in days],
            _("Granted"): [float(day.granted) for day in days],
        },
        unit=_("credits"),
        label_every=2,
        whole_numbers=False,
    )


@staff_member_required
def ops_workers(request: HttpRequest) -> HttpResponse:
    return render(request, "operations/workers.html", {"workers": read_workers(get_redis())})


@staff_member_required
@require_POST
def ops_worker_command(request: HttpRequest, worker_id: str) -> HttpResponse:
    action = request.POST.get("action", "")
    command: WorkerCommand
    if action in ("drain", "undrain"):
        command = {"action": "drain" if action == "drain" else "undrain"}
    elif action == "unload" and request.POST.get("model"):
        command = {"action": "unload", "model": request.POST["model"]}
    else:
        return HttpResponseBadRequest(_("action must be drain, undrain, or unload with a model"))
    send_worker_command(get_redis(), worker_id, command)
    messages.success(
        request, _("Sent “%(action)s” to %(worker)s.") % {"action": action, "worker": worker_id}
    )
    return redirect("ops_workers")


def metrics_allowed(request: HttpRequest) -> bool:
    """Staff (a session), or a scraper with `Authorization: Bearer <METRICS_TOKEN>` when that
    setting is set, compared in constant time."""
    if getattr(request.user, "is_staff", False):
        return True
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if not token or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header.removeprefix("Bearer ").encode(), token.encode())


def prometheus_metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus exposition of `operations.prometheus`; anyone else gets a 404 (the endpoint
    does not advertise itself)."""
    if not metrics_allowed(request):
        raise Http404
    return HttpResponse(generate_latest(prometheus.registry()), content_type=CONTENT_TYPE_LATEST)
