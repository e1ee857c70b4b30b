"""The gallery's pages: each parses input, checks who asks, and calls one service."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse, JsonResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.member_request import MemberRequest
from accounts.suspension import SuspensionError
from gallery import feed as feeds
from gallery import moderation
from gallery.errors import GalleryError, NotAllowed
from gallery.forms import (
    FeedFilterForm,
    ModerationForm,
    PngInfoForm,
    PreferencesForm,
    PublishForm,
    ReportForm,
    SuspendForm,
)
from gallery.likes import liked_ids, toggle_like
from gallery.models import GalleryPreferences, Publication, Visibility
from gallery.png_info import parameter_rows, read_png_info
from gallery.private_models import (
    png_with_parameters,
    redact_infotext,
    redact_text,
    shown_for,
)
from gallery.publishing import publication_state, publish_image, unpublish
from gallery.remix import remix_published_image
from generation.models import JobImage
from generation.suspension import suspend_user
from gpu_worker.infotext import parse_infotext, read_infotext


def staff_required(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Anonymous visitors go to the log-in page; members get 403."""

    @wraps(view)
    @login_required
    def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not request.user.is_staff:
            raise PermissionDenied(_("Only moderators can open this page."))
        return view(request, *args, **kwargs)

    return wrapped


def _refused(request: HttpRequest, error: GalleryError) -> HttpResponse:
    return render(request, "gallery/refused.html", {"message": error.message}, status=error.status)


def _wants_json(request: HttpRequest) -> bool:
    return "application/json" in request.headers.get("Accept", "")


def _decorate_cards(request: HttpRequest, publications: list[Publication]) -> None:
    """Per-viewer facts for a page of cards, in one query whatever the page size."""
    preferences = GalleryPreferences.of(request.user)
    liked = liked_ids(request.user, [p.pk for p in publications])
    for publication in publications:
        publication.blurred = publication.blurred_for(request.user, preferences)
        publication.liked = publication.pk in liked


def _page(request: HttpRequest, publications: Any) -> Any:
    page = Paginator(publications, feeds.PAGE_SIZE).get_page(request.GET.get("page"))
    _decorate_cards(request, list(page.object_list))
    return page


def feed(request: HttpRequest) -> HttpResponse:
    form = FeedFilterForm(request.GET)
    form.is_valid()  # an invalid field (an unknown sort) is dropped, the others still apply
    filters = form.cleaned_data
    sort = filters.get("sort") or feeds.Sort.NEWEST.value
    publications = feeds.feed(
        request.user, sort=sort, model=filters.get("model", ""), query=filters.get("q", "")
    )
    query = request.GET.copy()
    query.pop("page", None)
    return render(
        request,
        "gallery/feed.html",
        {
            "page_obj": _page(request, publications),
            "filter_form": form,
            "sort": sort,
            "sorts": feeds.Sort.choices,
            "model": filters.get("model", ""),
            "q": filters.get("q", ""),
            "models": feeds.models_in_gallery(),
            "query_string": query.urlencode(),
        },
    )


def author(request: HttpRequest, username: str) -> HttpResponse:
    member = get_object_or_404(get_user_model(), username=username)
    publications = feeds.feed(request.user, author=member)
    return render(
        request,
        "gallery/author.html",
        {
            "member": member,
            "page_obj": _page(request, publications),
            "totals": feeds.author_totals(publications),
        },
    )


def image(request: HttpRequest, pk: Any) -> HttpResponse:
    publication = get_object_or_404(Publication.objects.visible_to(request.user).for_cards(), pk=pk)
    _decorate_cards(request, [publication])
    job_image = publication.image
    infotext = job_image.infotext
    prompt = job_image.job.params.get("prompt", "")
    if not _is_author(request, publication):  # others never learn a private model's name
        shown = shown_for(job_image.job, infotext)
        infotext, prompt = redact_infotext(infotext, shown), redact_text(prompt, shown)
    parsed = parse_infotext(infotext) if infotext else {}
    return render(
        request,
        "gallery/image.html",
        {
            "publication": publication,
            "job_image": job_image,
            "checkpoint": job_image.job.checkpoint,
            "infotext": infotext,
            "prompt": parsed.get("Prompt", prompt),
            "negative_prompt": parsed.get("Negative prompt", ""),
            "parameters": parameter_rows(parsed),
            "remix": remix_published_image(request.user, publication),
            "is_owner": _is_author(request, publication),
            "report_form": ReportForm(),
            "moderation_form": ModerationForm(),
        },
    )


def image_file(request: HttpRequest, pk: Any, kind: str) -> HttpResponseBase:
    """The PNG (with its parameters chunk) or the thumbnail, for whoever may see the image."""
    publication = (
        Publication.objects.visible_to(request.user).select_related("image").filter(pk=pk).first()
    )
    if publication is None:
        raise Http404
    job_image = publication.image
    stored = job_image.thumbnail if kind == "thumbnail" and job_image.thumbnail else job_image.file
    if not stored.name:
        raise Http404
    download = kind == "download"
    if stored.name.endswith(".png") and not _is_author(request, publication):
        return _png_for_others(job_image, stored, download)
    response = FileResponse(
        stored.open("rb"),
        as_attachment=download,
        filename=f"atelier-{job_image.seed}.png" if download else "",
        content_type="image/webp" if stored.name.endswith(".webp") else "image/png",
    )
    # Visibility can change (unpublish, hide): shared caches must not keep a copy.
    response["Cache-Control"] = "private, max-age=300"
    return response


def _is_author(request: HttpRequest, publication: Publication) -> bool:
    return bool(request.user.is_authenticated and request.user.pk == publication.owner_id)


def _png_for_others(job_image: JobImage, stored: Any, download: bool) -> HttpResponse:
    """The PNG as others get it: its parameters chunk without private model names (the
    pixels and every other chunk as stored)."""
    with stored.open("rb") as handle:
        data = handle.read()
    infotext = read_infotext(data) or ""
    redacted = redact_infotext(infotext, shown_for(job_image.job, infotext))
    if redacted != infotext:
        data = png_with_parameters(data, redacted)
    response = HttpResponse(data, content_type="image/png")
    disposition = "attachment" if download else "inline"
    response["Content-Disposition"] = f'{disposition}; filename="atelier-{job_image.seed}.png"'
    response["Cache-Control"] = "private, max-age=300"
    return response


@login_required
@require_POST
def like(request: HttpRequest, pk: Any) -> HttpResponse:
    try:
        state = toggle_like(request.user, pk)
    except GalleryError as error:
        if _wants_json(request):
            return JsonResponse({"error": error.message}, status=error.status)
        return _refused(request, error)
    if _wants_json(request):
        return JsonResponse({"liked": state.liked, "likes_count": state.likes_count})
    return redirect("gallery:image", pk=pk)


@login_required
@require_POST
def report(request: HttpRequest, pk: Any) -> HttpResponse:
    form = ReportForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Choose a reason for the report."))
        return redirect("gallery:image", pk=pk)
    try:
        moderation.report_publication(
            request.user, pk, form.cleaned_data["reason"], form.cleaned_data["details"]
        )
    except GalleryError as error:
        if error.status == 404:
            return _refused(request, error)
        messages.error(request, error.message)
        return redirect("gallery:image", pk=pk)
    messages.success(request, _("Thank you. A moderator will look at this image."))
    return redirect("gallery:image", pk=pk)


def _back_to(request: HttpRequest, default: str) -> str:
    """Where a form sent from another page returns: its own `next`, if it is on this site."""
    wanted = request.POST.get("next") or request.GET.get("next") or ""
    if url_has_allowed_host_and_scheme(wanted, {request.get_host()}, request.is_secure()):
        return wanted
    return default


@login_required
def publish(request: HttpRequest, image_id: Any) -> HttpResponse:
    """The publish form: a page of its own, or (JSON) the in-page dialog's read and save."""
    job_image = get_object_or_404(JobImage.objects.select_related("job"), pk=image_id)
    if job_image.owner_id != request.user.pk:
        error = NotAllowed(_("You can only publish your own images."))
        if _wants_json(request):
            return JsonResponse({"detail": error.message}, status=error.status)
        return _refused(request, error)
    existing = Publication.objects.filter(pk=job_image.pk).first()
    if request.method == "GET" and _wants_json(request):
        return JsonResponse(publication_state(job_image.pk, existing))
    initial = None if existing else {"visibility": Visibility.PUBLIC}
    form = PublishForm(request.POST or None, instance=existing, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            publication = publish_image(request.user, job_image, **form.cleaned_data)
        except GalleryError as error:
            return _refused(request, error)
        if _wants_json(request):
            return JsonResponse(publication_state(job_image.pk, publication))
        if publication.is_published:
            messages.success(request, _("Published."))
        else:
            messages.info(request, _("Saved as private: only you can see it."))
        return redirect(_back_to(request, reverse("gallery:image", args=[publication.pk])))
    if request.method == "POST" and _wants_json(request):
        errors = {name: [str(e) for e in errs] for name, errs in form.errors.items()}
        return JsonResponse({"errors": errors}, status=400)
    return render(
        request,
        "gallery/publish.html",
        {
            "form": form,
            "job_image": job_image,
            "publication": existing,
            "next": _back_to(request, ""),
        },
    )


@login_required
@require_POST
def unpublish_view(request: HttpRequest, pk: Any) -> HttpResponse:
    publication = get_object_or_404(Publication, pk=pk, owner=request.user)
    try:
        unpublish(request.user, publication)
    except GalleryError as error:
        return _refused(request, error)
    if _wants_json(request):
        return JsonResponse(publication_state(pk, publication))
    messages.info(request, _("Unpublished: only you can see this image now."))
    return redirect(_back_to(request, reverse("gallery:image", args=[pk])))


@login_required
def preferences(request: MemberRequest) -> HttpResponse:
    instance, _created = GalleryPreferences.objects.get_or_create(user=request.user)
    form = PreferencesForm(request.POST or None, instance=instance)
    if request.method == "POST" and form.is_valid():
        form.save()
        messages.success(request, _("Gallery preferences saved."))
        return redirect("gallery:preferences")
    return render(request, "gallery/preferences.html", {"form": form})


@login_required
def png_info(request: HttpRequest) -> HttpResponse:
    form = PngInfoForm(request.POST or None, request.FILES or None)
    info = None
    status = 200
    if request.method == "POST" and form.is_valid():
        try:
            info = read_png_info(request.user, form.cleaned_data["image"])
        except GalleryError as error:
            form.add_error("image", error.message)
            status = 400
    elif request.method == "POST":
        status = 400
    return render(request, "gallery/png_info.html", {"form": form, "info": info}, status=status)


@staff_required
def moderation_queue(request: HttpRequest) -> HttpResponse:
    page = Paginator(moderation.moderation_queue(), feeds.PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    items = list(page.object_list)
    reports = moderation.open_reports_for(items)
    for publication in items:
        publication.open_report_list = reports.get(publication.pk, [])
    return render(
        request,
        "gallery/moderation.html",
        {
            "page_obj": page,
            "items": items,
            "moderation_form": ModerationForm(),
            "suspend_form": SuspendForm(),
        },
    )


@staff_required
@require_POST
def moderate(request: HttpRequest, pk: Any) -> HttpResponse:
    publication = get_object_or_404(Publication, pk=pk)
    form = ModerationForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Unknown moderation action."))
        return redirect("gallery:moderation")
    action, reason = form.cleaned_data["action"], form.cleaned_data["reason"]
    try:
        moderation.apply_action(request.user, publication, action, reason)
    except GalleryError as error:
        messages.error(request, error.message)
    else:
        messages.success(request, _("Done."))
    next_url = request.POST.get("next", "")
    if not url_has_allowed_host_and_scheme(next_url, allowed_hosts={request.get_host()}):
        next_url = reverse("gallery:moderation")
    return redirect(next_url)


@staff_required
@require_POST
def suspend(request: HttpRequest, user_id: int) -> HttpResponse:
    member = get_object_or_404(get_user_model(), pk=user_id)
    form = SuspendForm(request.POST)
    if not form.is_valid():
        messages.error(request, _("Give a reason: it is kept in the log."))
        return redirect("gallery:moderation")
    try:
        cancelled = suspend_user(request.user, member, form.cleaned_data["reason"])
    except SuspensionError as error:
        messages.error(request, error.message)
    else:
        messages.success(
            request,
            _("%(name)s is suspended; %(jobs)s unfinished jobs cancelled.")
            % {"name": member.username, "jobs": cancelled},
        )
    return redirect("gallery:moderation")
