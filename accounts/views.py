from __future__ import annotations

from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.forms import ApiTokenForm, SignUpForm
from accounts.ledger import account_for, open_account
from accounts.member_request import MemberRequest
from accounts.models import ApiToken


def signup(request: HttpRequest) -> HttpResponse:
    if request.user.is_authenticated:
        return redirect("home")
    form = SignUpForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        user = form.save()
        open_account(user)  # Free tier and the welcome grant
        login(request, user, backend="django.contrib.auth.backends.ModelBackend")
        messages.success(request, _("Welcome to Atelier, %(name)s!") % {"name": user.username})
        return redirect("home")
    return render(request, "registration/signup.html", {"form": form})


@login_required
def profile(request: MemberRequest) -> HttpResponse:
    return _render_profile(request, ApiTokenForm())


@login_required
@require_POST
def create_token(request: MemberRequest) -> HttpResponse:
    form = ApiTokenForm(request.POST)
    new_secret = None
    if form.is_valid():
        _token, new_secret = ApiToken.issue(request.user, form.cleaned_data["name"])
        form = ApiTokenForm()
    return _render_profile(request, form, new_secret=new_secret)


@login_required
@require_POST
def revoke_token(request: MemberRequest, token_id: int) -> HttpResponse:
    # Scoped to the caller: another user's token id is a 404, never a revoke.
    token = get_object_or_404(ApiToken, pk=token_id, user=request.user)
    token.revoke()
    messages.info(request, _("Token “%(name)s” revoked.") % {"name": token.name})
    return redirect("profile")


def _render_profile(
    request: MemberRequest, form: ApiTokenForm, new_secret: str | None = None
) -> HttpResponse:
    tokens = ApiToken.objects.filter(user=request.user, revoked_at__isnull=True)
    return render(
        request,
        "accounts/profile.html",
        {
            "token_form": form,
            "tokens": tokens,
            "new_secret": new_secret,
            "credit_account": account_for(request.user),
        },
    )
