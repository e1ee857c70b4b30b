"""The members' admin: Django's User admin with credits, tier, jobs, images and API tokens.

Staff change credits, tier and suspension only through forms that ask for a reason and call the
services (accounts.staff_actions, generation.suspension), which log who did it and why. The active
flag is read-only here: suspending must also cancel the member's jobs and refund their holds.
It lives in operations/, above generation/ and gallery/, because it shows a member's jobs and
publications; the User model stays in accounts/ and its admin URLs stay `admin:accounts_user_*`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied
from django.db.models import F, Q, QuerySet
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from accounts import staff_actions
from accounts.forms import AdjustBalanceForm, ReasonForm, TierChangeForm
from accounts.models import ApiToken, CreditAccount, MembershipTier, User
from accounts.signup_admin import SuspiciousSignupFilter, signup_flags
from accounts.staff_actions import StaffActionError
from accounts.suspension import SuspensionError, reinstate_user
from gallery.models import Publication
from generation.models import Job
from generation.suspension import suspend_user

RECENT = 10  # jobs and images shown on a member's page

# --- the staff actions, each a form with a reason -----------------------------------------------


@dataclass(frozen=True)
class MemberAction:
    title: Any
    form: type[forms.Form]
    # (actor, member, cleaned form data) -> the success message; raises StaffActionError or
    # SuspensionError with a message for the admin.
    apply: Callable[[Any, User, dict[str, Any]], str]


def _apply_credits(actor: Any, member: User, data: dict[str, Any]) -> str:
    entry = staff_actions.adjust_credits(actor, member, data["amount"], data["reason"])
    balance = CreditAccount.objects.get(pk=member.pk).balance
    return _("%(user)s: %(amount)s credits, balance now %(balance)s.") % {
        "user": member,
        "amount": f"{entry.amount:+}",
        "balance": balance,
    }


def _apply_tier(actor: Any, member: User, data: dict[str, Any]) -> str:
    staff_actions.change_tier(actor, member, data["tier"], data["reason"], data.get("until"))
    return _("%(user)s is now on %(tier)s.") % {"user": member, "tier": data["tier"]}


def _apply_suspend(actor: Any, member: User, data: dict[str, Any]) -> str:
    if not member.is_active:
        raise StaffActionError(_("already suspended"))
    cancelled = suspend_user(actor, member, data["reason"])
    return _("%(user)s is suspended; %(jobs)d unfinished jobs cancelled.") % {
        "user": member,
        "jobs": cancelled,
    }


def _apply_reinstate(actor: Any, member: User, data: dict[str, Any]) -> str:
    if member.is_active:
        raise StaffActionError(_("not suspended"))
    reinstate_user(actor, member, data["reason"])
    return _("%(user)s is reinstated.") % {"user": member}


MEMBER_ACTIONS: dict[str, MemberAction] = {
    "credits": MemberAction(
        gettext_lazy("Grant or deduct credits"), AdjustBalanceForm, _apply_credits
    ),
    "tier": MemberAction(gettext_lazy("Change tier"), TierChangeForm, _apply_tier),
    "suspend": MemberAction(gettext_lazy("Suspend"), ReasonForm, _apply_suspend),
    "reinstate": MemberAction(gettext_lazy("Reinstate"), ReasonForm, _apply_reinstate),
}


# --- list filters -------------------------------------------------------------------------------


class TierFilter(admin.SimpleListFilter):
    title = gettext_lazy("tier")
    parameter_name = "tier"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [(tier.slug, tier.name) for tier in MembershipTier.objects.all()]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        return queryset.filter(credit_account__tier__slug=value) if value else queryset


class SuspendedFilter(admin.SimpleListFilter):
    title = gettext_lazy("suspended")
    parameter_name = "suspended"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [("yes", _("Suspended")), ("no", _("Not suspended"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        if self.value() == "yes":
            return queryset.filter(is_active=False)
        if self.value() == "no":
            return queryset.filter(is_active=True)
        return queryset


class LastActiveFilter(admin.SimpleListFilter):
    """Active meaning seen lately: logged in within the period (suspension has its own filter)."""

    title = gettext_lazy("active (last log-in)")
    parameter_name = "active"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("7", _("In the last 7 days")),
            ("30", _("In the last 30 days")),
            ("never", _("Never")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value == "never":
            return queryset.filter(last_login__isnull=True)
        if value in ("7", "30"):
            since = timezone.now() - timedelta(days=int(value))
            return queryset.filter(last_login__gte=since)
        return queryset


class BalanceFilter(admin.SimpleListFilter):
    title = gettext_lazy("balance")
    parameter_name = "balance"
    RANGES: dict[str, tuple[Decimal | None, Decimal | None]] = {
        "0": (None, Decimal("0")),
        "0-10": (Decimal("0"), Decimal("10")),
        "10-100": (Decimal("10"), Decimal("100")),
        "100+": (Decimal("100"), None),
    }

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, Any]]:
        return [
            ("0", _("None")),
            ("0-10", _("Under 10")),
            ("10-100", _("10 to under 100")),
            ("100+", _("100 or more")),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet) -> QuerySet:
        value = self.value()
        if value is None or value not in self.RANGES:
            return queryset
        low, high = self.RANGES[value]
        if low is None:  # no credits, or no account yet
            return queryset.filter(
                Q(credit_account__isnull=True) | Q(credit_account__balance__lte=0)
            )
        rows = queryset.filter(credit_account__balance__gte=low)
        if low == 0:
            rows = rows.filter(credit_account__balance__gt=0)
        return rows.filter(credit_account__balance__lt=high) if high is not None else rows


# --- the admin ----------------------------------------------------------------------------------


def _header(*titles: Any) -> str:
    return format_html(
        "<thead><tr>{}</tr></thead>", format_html_join("", "<th>{}</th>", ((t,) for t in titles))
    )


def _account(member: User) -> CreditAccount | None:
    # A user made by createsuperuser has no account until first use; the admin must not open one.
    return getattr(member, "credit_account", None)


class MemberAdmin(UserAdmin):
    list_display = (
        "username",
        "email",
        "tier_name",
        "balance",
        "suspended",
        "is_staff",
        "date_joined",
        "last_login",
        signup_flags,
    )
    list_filter = (
        SuspiciousSignupFilter,
        TierFilter,
        SuspendedFilter,
        LastActiveFilter,
        BalanceFilter,
        ("date_joined", admin.DateFieldListFilter),
        "is_staff",
    )
    search_fields = ("username", "email", "first_name", "last_name")
    actions = ["grant_or_deduct_credits", "change_tier", "suspend", "reinstate"]
    fieldsets = (
        *(UserAdmin.fieldsets or ()),
        (
            gettext_lazy("Credits and activity"),
            {"fields": ("credit_summary", "recent_jobs", "published_images", "api_tokens")},
        ),
        (gettext_lazy("Sign-up"), {"fields": ("signup_address", "signup_flags")}),
    )
    readonly_fields = (
        "is_active",
        "last_login",
        "date_joined",
        "credit_summary",
        "recent_jobs",
        "published_images",
        "api_tokens",
        "signup_address",
        "signup_flags",
    )
    change_form_template = "admin/accounts/user/change_form.html"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return (
            super()
            .get_queryset(request)
            .select_related("credit_account__tier")
            .annotate(balance_value=F("credit_account__balance"))
        )

    # --- columns ---------------------------------------------------------------------------

    @admin.display(description=gettext_lazy("tier"), ordering="credit_account__tier__rank")
    def tier_name(self, member: User) -> str:
        account = _account(member)
        return account.tier.name if account else "–"

    @admin.display(description=gettext_lazy("balance"), ordering="balance_value")
    def balance(self, member: User) -> Any:
        account = _account(member)
        return account.balance if account else Decimal("0.00")

    @admin.display(description=gettext_lazy("suspended"), boolean=True, ordering="is_active")
    def suspended(self, member: User) -> bool:
        return not member.is_active

    # --- the member's page -----------------------------------------------------------------

    @admin.display(description=gettext_lazy("Credits"))
    def credit_summary(self, member: User) -> str:
        account = _account(member)
        if account is None:
            return _("No credit account yet (opened on first use).")
        ledger_url = reverse("admin:accounts_creditentry_changelist") + f"?q={member.username}"
        until = (
            _(" until %(date)s") % {"date": f"{account.tier_expires_at:%Y-%m-%d %H:%M}"}
            if account.tier_expires_at
            else ""
        )
        return format_html(
            '{}: <strong class="member-balance">{}</strong> · {}: {} · {}: {}{} · '
            '<a href="{}">{}</a>',
            _("Balance"),
            account.balance,
            _("held"),
            account.held,
            _("tier"),
            account.tier.name,
            until,
            ledger_url,
            _("Ledger entries"),
        )

    @admin.display(description=gettext_lazy("Recent jobs"))
    def recent_jobs(self, member: User) -> str:
        jobs = Job.objects.owned_by(member).select_related("checkpoint")[:RECENT]
        if not jobs:
            return _("No jobs.")
        rows = format_html_join(
            "",
            '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>',
            (
                (
                    reverse("admin:generation_job_change", args=[job.pk]),
                    str(job.pk)[:8],
                    job.get_status_display(),
                    job.checkpoint.name,
                    job.price,
                    f"{job.created_at:%Y-%m-%d %H:%M}",
                )
                for job in jobs
            ),
        )
        all_url = reverse("admin:generation_job_changelist") + f"?owner__id__exact={member.pk}"
        head = _header(_("Job"), _("State"), _("Model"), _("Price"), _("Submitted"))
        return format_html(
            '<table class="member-jobs">{}{}</table><a href="{}">{}</a>',
            head,
            rows,
            all_url,
            _("All jobs"),
        )

    @admin.display(description=gettext_lazy("Published images"))
    def published_images(self, member: User) -> str:
        items = Publication.objects.filter(owner=member).order_by("-published_at")[:RECENT]
        if not items:
            return _("Nothing published.")
        return format_html_join(
            " ",
            '<a href="{}" title="{} ({})"><img src="{}" alt="{}" width="64"></a>',
            (
                (
                    reverse("admin:gallery_publication_change", args=[p.pk]),
                    p.display_title,
                    p.get_visibility_display(),
                    reverse("gallery:thumbnail", args=[p.pk]),
                    p.display_title,
                )
                for p in items
            ),
        )

    @admin.display(description=gettext_lazy("API tokens"))
    def api_tokens(self, member: User) -> str:
        tokens = list(ApiToken.objects.filter(user=member))
        if not tokens:
            return _("No API tokens.")

        def state(token: ApiToken) -> str:
            if token.revoked_at:
                return format_html("{} {:%Y-%m-%d}", _("revoked"), token.revoked_at)
            url = reverse("admin:accounts_user_revoke_token", args=[member.pk, token.pk])
            return format_html('<a href="{}" class="revoke-token">{}</a>', url, _("Revoke…"))

        head = _header(_("Name"), _("Starts with"), _("Created"), _("Last used"), "")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td><code>{}…</code></td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    t.name,
                    t.hint,
                    f"{t.created_at:%Y-%m-%d}",
                    f"{t.last_used_at:%Y-%m-%d %H:%M}" if t.last_used_at else "–",
                    state(t),
                )
                for t in tokens
            ),
        )
        return format_html('<table class="member-tokens">{}{}</table>', head, rows)

    # --- actions from the list and from the member's page ----------------------------------

    @admin.action(description=gettext_lazy("Grant or deduct credits…"), permissions=["change"])
    def grant_or_deduct_credits(self, request: HttpRequest, queryset: QuerySet) -> Any:
        return self._member_action(request, "credits", list(queryset), from_list=True)

    @admin.action(description=gettext_lazy("Change tier…"), permissions=["change"])
    def change_tier(self, request: HttpRequest, queryset: QuerySet) -> Any:
        return self._member_action(request, "tier", list(queryset), from_list=True)

    @admin.action(description=gettext_lazy("Suspend (cancels their jobs)…"), permissions=["change"])
    def suspend(self, request: HttpRequest, queryset: QuerySet) -> Any:
        return self._member_action(request, "suspend", list(queryset), from_list=True)

    @admin.action(description=gettext_lazy("Reinstate…"), permissions=["change"])
    def reinstate(self, request: HttpRequest, queryset: QuerySet) -> Any:
        return self._member_action(request, "reinstate", list(queryset), from_list=True)

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        return [
            path(
                "<int:object_id>/act/<slug:kind>/",
                view(self.member_action_view),
                name="accounts_user_member_action",
            ),
            path(
                "<int:object_id>/tokens/<int:token_id>/revoke/",
                view(self.revoke_token_view),
                name="accounts_user_revoke_token",
            ),
            *super().get_urls(),
        ]

    def member_action_view(self, request: HttpRequest, object_id: int, kind: str) -> Any:
        member = get_object_or_404(User, pk=object_id)
        if kind not in MEMBER_ACTIONS:
            return redirect("admin:accounts_user_change", member.pk)
        if not self.has_change_permission(request, member):
            raise PermissionDenied
        return self._member_action(request, kind, [member], from_list=False)

    def _member_action(
        self, request: HttpRequest, kind: str, members: list[User], *, from_list: bool
    ) -> HttpResponse | None:
        """Show the action's form; once posted with `apply`, run it for each member.

        From the list, the form posts back to the changelist (Django's intermediate-page
        pattern, as "delete selected" does); returning None then redirects to the list."""
        action = MEMBER_ACTIONS[kind]
        submitted = request.method == "POST" and "apply" in request.POST
        form = action.form(request.POST if submitted else None)
        if submitted and form.is_valid():
            for member in members:
                try:
                    done = action.apply(request.user, member, form.cleaned_data)
                except (StaffActionError, SuspensionError) as error:
                    self.message_user(request, f"{member}: {error.message}", messages.ERROR)
                else:
                    self.message_user(request, done, messages.SUCCESS)
            if from_list:
                return None
            return redirect("admin:accounts_user_change", members[0].pk)
        context = {
            **self.admin_site.each_context(request),
            "title": action.title,
            "opts": self.model._meta,
            "kind": kind,
            "form": form,
            "members": members,
            "from_list": from_list,
            "action_name": request.POST.get("action", ""),
        }
        return TemplateResponse(
            request,
            "admin/accounts/member_action.html",
            context,
            status=400 if form.errors else 200,
        )

    def revoke_token_view(self, request: HttpRequest, object_id: int, token_id: int) -> Any:
        token = get_object_or_404(
            ApiToken.objects.select_related("user"), pk=token_id, user_id=object_id
        )
        if not self.has_change_permission(request, token.user):
            raise PermissionDenied
        if request.method == "POST":
            if staff_actions.revoke_token(request.user, token):
                self.message_user(request, _("Token revoked."), messages.SUCCESS)
            else:
                self.message_user(request, _("That token was already revoked."), messages.WARNING)
            return redirect("admin:accounts_user_change", object_id)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Revoke the API token %(name)s") % {"name": token},
            "opts": self.model._meta,
            "token": token,
            "member": token.user,
        }
        return TemplateResponse(request, "admin/accounts/revoke_token.html", context)
