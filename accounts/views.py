from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.forms import ApiTokenForm
from accounts.ledger import account_for
from accounts.member_request import MemberRequest
from accounts.models import ApiToken

# The new token's secret waits in the session for the one page view that shows it.
JUST_ISSUED = "new_api_token"


@login_required
def profile(request: MemberRequest) -> HttpResponse:
    new_secret = request.session.pop(JUST_ISSUED, None)
    return _render_profile(request, ApiTokenForm(), new_secret=new_secret)


@login_required
@require_POST
def create_token(request: MemberRequest) -> HttpResponse:
    form = ApiTokenForm(request.POST)
    if not form.is_valid():
        return _render_profile(request, form)
    _token, new_secret = ApiToken.issue(request.user, form.cleaned_data["name"])
    # Post/Redirect/Get: reloading the page that shows the secret cannot issue a second token.
    request.session[JUST_ISSUED] = new_secret
    return redirect(f"{reverse('profile')}#api-tokens")


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
