from __future__ import annotations

from typing import Any, cast

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from accounts import staff_actions
from accounts.forms import AdjustBalanceForm
from accounts.models import (
    ApiToken,
    CreditAccount,
    CreditEntry,
    CreditPack,
    MembershipPlan,
    Purchase,
    RedeemCode,
    Redemption,
    StripeEvent,
    User,
)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("name", "user", "hint", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("name", "user__username")
    readonly_fields = ("token_hash", "hint", "created_at", "last_used_at", "revoked_at")
    list_select_related = ("user",)
    actions = ["revoke_tokens"]

    @admin.action(description=_("Revoke selected tokens"), permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: Any) -> None:
        revoked = sum(staff_actions.revoke_token(request.user, token) for token in queryset)
        self.message_user(request, _("%(n)d token(s) revoked.") % {"n": revoked})


# --- credits ------------------------------------------------------------------------------------


class ReadOnlyAdmin(admin.ModelAdmin):
    """Records that only the services write (ledger entries, Stripe events, purchases)."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(CreditAccount)
class CreditAccountAdmin(admin.ModelAdmin):
    list_display = ("user", "tier", "tier_expires_at", "balance", "held", "updated_at")
    list_filter = ("tier",)
    search_fields = ("user__username", "user__email")
    list_select_related = ("user", "tier")
    fields = ("user", "tier", "tier_expires_at", "balance", "held", "adjust_link")
    # Tier and balance change only through the member actions, which ask why and log it.
    readonly_fields = ("user", "tier", "tier_expires_at", "balance", "held", "adjust_link")
    actions = ["adjust_balance"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # accounts open with their user (accounts.ledger.open_account)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description=_("Adjust"))
    def adjust_link(self, obj: CreditAccount) -> str:
        url = reverse("admin:accounts_creditaccount_adjust", args=[obj.pk])
        tier_url = reverse("admin:accounts_user_member_action", args=[obj.pk, "tier"])
        return format_html(
            '<a href="{}">{}</a> · <a href="{}">{}</a>',
            url,
            _("Adjust the balance…"),
            tier_url,
            _("Change the tier…"),
        )

    def get_urls(self) -> list[Any]:
        return [
            path(
                "<int:pk>/adjust/",
                self.admin_site.admin_view(self.adjust_view),
                name="accounts_creditaccount_adjust",
            ),
            *super().get_urls(),
        ]

    @admin.action(description=_("Adjust the balance of the selected account"))
    def adjust_balance(self, request: HttpRequest, queryset: Any) -> HttpResponse | None:
        if queryset.count() != 1:
            self.message_user(request, _("Select exactly one account."), messages.WARNING)
            return None
        return redirect("admin:accounts_creditaccount_adjust", queryset.first().pk)

    def adjust_view(self, request: HttpRequest, pk: int) -> HttpResponse:
        account = get_object_or_404(CreditAccount.objects.select_related("user"), pk=pk)
        if not self.has_change_permission(request, account):
            raise PermissionDenied
        form = AdjustBalanceForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            try:
                staff_actions.adjust_credits(
                    request.user,
                    account.user,
                    form.cleaned_data["amount"],
                    form.cleaned_data["reason"],
                )
            except staff_actions.StaffActionError as exc:
                form.add_error("amount", exc.message)
            else:
                self.message_user(request, _("Balance adjusted."), messages.SUCCESS)
                return redirect("admin:accounts_creditaccount_change", account.pk)
        context = {
            **self.admin_site.each_context(request),
            "title": _("Adjust the balance of %(user)s") % {"user": account.user},
            "account": account,
            "form": form,
            "opts": self.model._meta,
            "entries": account.entries.all()[:20],
        }
        return TemplateResponse(
            request,
            "admin/accounts/adjust_balance.html",
            context,
            status=400 if form.errors else 200,
        )


@admin.register(CreditEntry)
class CreditEntryAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "account",
        "kind",
        "amount",
        "held_delta",
        "job_id",
        "actor",
        "reason",
    )
    list_filter = ("kind",)
    search_fields = ("account__user__username", "job_id", "reason", "key")
    list_select_related = ("account__user", "actor")
    date_hierarchy = "created_at"


@admin.register(CreditPack)
class CreditPackAdmin(admin.ModelAdmin):
    list_display = ("name", "credits", "price_cents", "currency", "active", "position")
    list_editable = ("active", "position")


@admin.register(MembershipPlan)
class MembershipPlanAdmin(admin.ModelAdmin):
    list_display = ("name", "tier", "days", "credits", "price_cents", "currency", "active")
    list_editable = ("active",)


@admin.register(Purchase)
class PurchaseAdmin(ReadOnlyAdmin):
    list_display = (
        "created_at",
        "user",
        "pack",
        "plan",
        "credits",
        "amount_cents",
        "currency",
        "status",
        "paid_at",
    )
    list_filter = ("status",)
    search_fields = ("user__username", "stripe_session_id")


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ("received_at", "event_id", "type", "outcome")
    list_filter = ("type",)
    search_fields = ("event_id",)


class RedemptionInline(admin.TabularInline):
    model = Redemption
    extra = 0
    can_delete = False
    readonly_fields = ("user", "created_at")

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(RedeemCode)
class RedeemCodeAdmin(admin.ModelAdmin):
    list_display = ("code", "credits", "tier", "tier_days", "uses", "max_uses", "expires_at")
    search_fields = ("code",)
    readonly_fields = ("uses", "created_by", "created_at")
    inlines = [RedemptionInline]

    def save_model(self, request: HttpRequest, obj: RedeemCode, form: Any, change: bool) -> None:
        if not change:
            obj.created_by = cast(User, request.user)  # the admin site lets only staff in
        super().save_model(request, obj, form, change)
