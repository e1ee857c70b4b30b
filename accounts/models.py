from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import datetime, time, timedelta
from decimal import Decimal
from typing import Any, ClassVar, cast

from django.conf import settings
from django.contrib.auth.models import AbstractUser, UserManager
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Lower
from django.utils import timezone
from django.utils.translation import gettext_lazy as _

from accounts.queries import CompiledOnce

TOKEN_PREFIX = "atl_"  # noqa: S105 - a public prefix that marks the secret, not a secret


class User(AbstractUser):
    """Atelier's user. Custom from the first migration so later fields need no data surgery."""

    email = models.EmailField(_("email address"), unique=True)
    # Where the sign-up came from, and why it looks like farming (accounts/signup_review.py):
    # empty flags mean nothing suspicious. Admins filter members on them.
    signup_address = models.GenericIPAddressField(_("sign-up address"), null=True, blank=True)
    signup_flags = models.CharField(_("sign-up flags"), max_length=200, blank=True)

    objects: ClassVar[UserManager] = UserManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(Lower("email"), name="unique_email_case_insensitive"),
        ]


def hash_token(secret: str) -> str:
    # Tokens carry 256 bits of randomness, so a fast hash is safe here (unlike passwords).
    return hashlib.sha256(secret.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet["ApiToken"]):
    def active(self) -> ApiTokenQuerySet:
        return self.filter(revoked_at__isnull=True, user__is_active=True)


class ApiToken(models.Model):
    """A named credential for scripts. Only its hash is stored; the secret is shown once."""

    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens"
    )
    name = models.CharField(_("name"), max_length=64)
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    hint = models.CharField(
        max_length=12, editable=False, help_text="First characters, to tell tokens apart"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("API token")

    def __str__(self) -> str:
        return f"{self.name} ({self.hint}…)"

    @classmethod
    def issue(cls, user: User, name: str) -> tuple[ApiToken, str]:
        """Create a token; returns it with the secret, which is never retrievable again."""
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, token_hash=hash_token(secret), hint=secret[:10]
        )
        return token, secret

    @classmethod
    def authenticate(cls, secret: str) -> ApiToken | None:
        """The active token with this secret, its user and the user's credit account and tier
        read in the same query (every API call asks for the tier: limits, rate)."""
        found = TOKEN_BY_HASH.instances(hash_token(secret))  # token_hash is unique
        token = cast("ApiToken | None", found[0] if found else None)
        if token is not None:
            token.touch()
        return token

    def touch(self) -> None:
        now = timezone.now()
        # Write at most once a minute: a busy script must not turn every call into a write.
        if self.last_used_at is None or (now - self.last_used_at).total_seconds() > 60:
            ApiToken.objects.filter(pk=self.pk).update(last_used_at=now)
            self.last_used_at = now

    def revoke(self) -> None:
        ApiToken.objects.filter(pk=self.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )

    @property
    def is_active(self) -> bool:
        return self.revoked_at is None


# --- credits: tiers, accounts and the append-only ledger -------------------------------------
#
# Every change of a balance goes through accounts/ledger.py, which writes a CreditEntry in the
# same transaction. `CreditAccount.balance` is what the user can spend now; `held` is reserved by
# unfinished jobs. Both are caches of the ledger: balance == sum(amount), held == sum(held_delta).

CENT = Decimal("0.01")


# Every API call reads its token, with the user and the user's credit account and tier (limits,
# rate): compiled once (accounts/queries.py says why).
TOKEN_BY_HASH = CompiledOnce(
    lambda token_hash: (
        ApiToken.objects.active()
        .select_related("user__credit_account__tier")
        .filter(token_hash=token_hash)
        .order_by()[:1]
    ),
    stand_in="stand-in-token-hash",
)


def money_field(verbose_name: Any, **kwargs: Any) -> models.DecimalField:
    return models.DecimalField(
        verbose_name, max_digits=12, decimal_places=2, default=Decimal("0"), **kwargs
    )


class MembershipTierQuerySet(models.QuerySet["MembershipTier"]):
    def default(self) -> MembershipTier:
        """The tier new accounts start on: the one flagged default, else the lowest rank."""
        tier: MembershipTier | None = (
            self.filter(is_default=True).first() or self.order_by("rank").first()
        )
        if tier is None:
            # A database without the data migration's rows (should not happen): make one.
            tier, _created = self.get_or_create(
                slug="free", defaults={"name": "Free", "is_default": True}
            )
        return tier


class MembershipTier(models.Model):
    """A level of membership: its free credits, its limits and its place in the queue."""

    class Period(models.TextChoices):
        NONE = "none", _("No periodic grant")
        DAILY = "daily", _("Daily")
        MONTHLY = "monthly", _("Monthly")

    name = models.CharField(_("name"), max_length=64)
    slug = models.SlugField(_("slug"), max_length=32, unique=True)
    rank = models.PositiveIntegerField(
        _("rank"), default=0, help_text=_("Higher ranks are better tiers; a code never downgrades")
    )
    is_default = models.BooleanField(_("default for new users"), default=False)
    welcome_grant = money_field(_("welcome grant"))
    grant_amount = money_field(_("periodic grant"))
    grant_period = models.CharField(
        _("grant period"), max_length=16, choices=Period.choices, default=Period.NONE
    )
    max_side = models.PositiveIntegerField(_("max width/height"), default=1024)
    max_pixels = models.PositiveIntegerField(_("max pixels"), default=1024 * 1024)
    max_steps = models.PositiveIntegerField(_("max steps"), default=50)
    max_images = models.PositiveIntegerField(_("max images per job"), default=4)
    max_unfinished_jobs = models.PositiveIntegerField(_("max unfinished jobs"), default=2)
    max_controlnet_units = models.PositiveIntegerField(
        _("max ControlNet units per job"), default=2, help_text=_("0: no ControlNet")
    )
    priority_weight = models.PositiveIntegerField(
        _("queue priority weight"),
        default=1,
        help_text=_("Share of GPU time relative to other tiers when the queue is busy"),
    )
    api_requests_per_minute = models.PositiveIntegerField(
        _("API requests per minute"),
        default=0,
        help_text=_("REST and A1111 API calls per member per minute; 0: the server default"),
    )
    model_storage_mb = models.PositiveIntegerField(
        _("model storage (MiB)"),
        default=8192,
        help_text=_("Total size of the models a member may upload; 0: no uploads"),
    )
    model_count = models.PositiveIntegerField(
        _("uploaded models"), default=10, help_text=_("How many models a member may upload")
    )
    # LoRA training (issue 20): who may train, how many at once, and the dataset limits.
    max_trainings = models.PositiveIntegerField(
        _("trainings at once"),
        default=1,
        help_text=_("LoRA trainings a member may have queued or running; 0: no training"),
    )
    training_max_images = models.PositiveIntegerField(_("images per training dataset"), default=100)
    training_dataset_mb = models.PositiveIntegerField(
        _("training upload size (MiB)"),
        default=200,
        help_text=_("The largest dataset upload (a zip's unpacked size counts)"),
    )
    training_max_pixels = models.PositiveIntegerField(
        _("max pixels per training image"), default=4096 * 4096
    )
    all_models = models.BooleanField(_("all models allowed"), default=True)
    # Catalogue names (generation.CatalogEntry.name), kept as data rather than a relation so the
    # accounts app does not depend on the generation app's migrations.
    allowed_models = models.JSONField(
        _("allowed models"),
        default=list,
        blank=True,
        help_text=_("Catalogue names usable when 'all models' is off"),
    )

    objects = MembershipTierQuerySet.as_manager()

    class Meta:
        ordering = ["rank", "name"]
        verbose_name = _("membership tier")
        constraints = [
            models.UniqueConstraint(
                fields=["is_default"], condition=Q(is_default=True), name="one_default_tier"
            ),
            models.CheckConstraint(
                condition=Q(grant_amount__gte=0), name="tier_grant_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(welcome_grant__gte=0), name="tier_welcome_not_negative"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    def allows_model(self, name: str) -> bool:
        return self.all_models or name in (self.allowed_models or [])

    def period_key(self, now: datetime) -> str | None:
        """The grant period `now` falls in ('daily:2026-11-23'), None without periodic grants."""
        if self.grant_period == self.Period.NONE or self.grant_amount <= 0:
            return None
        day = timezone.localdate(now)
        if self.grant_period == self.Period.DAILY:
            return f"grant:daily:{day.isoformat()}"
        return f"grant:monthly:{day:%Y-%m}"

    def next_grant_at(self, now: datetime) -> datetime | None:
        if self.period_key(now) is None:
            return None
        day = timezone.localdate(now)
        if self.grant_period == self.Period.DAILY:
            start = day + timedelta(days=1)
        else:
            start = (day.replace(day=1) + timedelta(days=32)).replace(day=1)
        return timezone.make_aware(datetime.combine(start, time.min))


class CreditAccount(models.Model):
    # The user's id is the account's id: a hold can update the row knowing only the user.
    user = models.OneToOneField(
        settings.AUTH_USER_MODEL,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="credit_account",
    )
    tier = models.ForeignKey(MembershipTier, on_delete=models.PROTECT, related_name="accounts")
    tier_expires_at = models.DateTimeField(
        _("tier expires"),
        null=True,
        blank=True,
        help_text=_("Back to the default tier after this; empty: no end"),
    )
    balance = money_field(_("balance"), editable=False)
    held = money_field(_("held"), editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("credit account")
        constraints = [
            models.CheckConstraint(condition=Q(balance__gte=0), name="balance_not_negative"),
            models.CheckConstraint(condition=Q(held__gte=0), name="held_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.user} ({self.balance})"


class CreditEntryQuerySet(models.QuerySet["CreditEntry"]):
    def of_user(self, user: Any) -> CreditEntryQuerySet:
        return self.filter(account__user=user)

    def for_job(self, job_id: Any) -> CreditEntryQuerySet:
        return self.filter(job_id=job_id)


class CreditEntry(models.Model):
    """One movement of credits. Never edited nor deleted: a correction is a new entry."""

    class Kind(models.TextChoices):
        GRANT = "grant", _("Grant")
        TOP_UP = "top_up", _("Top-up")
        HOLD = "hold", _("Hold")
        CAPTURE = "capture", _("Charge")
        RELEASE = "release", _("Release")
        REFUND = "refund", _("Refund")
        ADJUSTMENT = "adjustment", _("Adjustment")
        REDEEM = "redeem", _("Redeemed code")
        # A share of a job's hold charged before the job ends (a finished training epoch): it
        # empties that much of the hold; the job's one settlement later settles the rest.
        PART_CAPTURE = "part_capture", _("Charge (part)")

    SETTLEMENTS = (Kind.CAPTURE, Kind.RELEASE)

    account = models.ForeignKey(CreditAccount, on_delete=models.PROTECT, related_name="entries")
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    amount = models.DecimalField(
        _("amount"), max_digits=12, decimal_places=2, help_text=_("Change of the balance")
    )
    held_delta = models.DecimalField(
        _("held change"), max_digits=12, decimal_places=2, default=Decimal("0")
    )
    # A plain UUID, not a foreign key: the ledger outlives jobs, and accounts must not depend on
    # the generation app's migrations. generation.Job ids are UUIDs.
    job_id = models.UUIDField(_("job"), null=True, blank=True)
    purchase = models.ForeignKey(
        "accounts.Purchase", null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    redemption = models.ForeignKey(
        "accounts.Redemption",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="entries",
    )
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text=_("Staff member behind an adjustment or refund"),
    )
    reason = models.CharField(_("reason"), max_length=500, blank=True)
    key = models.CharField(
        max_length=200, blank=True, help_text=_("Idempotency key: at most one entry per account")
    )
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = CreditEntryQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = _("credit entry")
        verbose_name_plural = _("credit entries")
        indexes = [
            models.Index(fields=["account", "-created_at"], name="entry_account_created"),
            models.Index(fields=["job_id"], name="entry_job"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["job_id"], condition=Q(kind="hold"), name="one_hold_per_job"
            ),
            models.UniqueConstraint(
                fields=["job_id"],
                condition=Q(kind__in=["capture", "release"]),
                name="one_settlement_per_job",
            ),
            models.UniqueConstraint(
                fields=["account", "key"], condition=~Q(key=""), name="one_entry_per_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.amount:+}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if not self._state.adding:
            raise ValueError("Credit entries are append-only: write a correcting entry instead")
        super().save(*args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> Any:
        raise ValueError("Credit entries are append-only")

    @property
    def charged(self) -> Decimal:
        """Credits this entry consumed for good: a settlement's captured part, or a part
        charged before the settlement."""
        charging = (*self.SETTLEMENTS, self.Kind.PART_CAPTURE)
        return -(self.amount + self.held_delta) if self.kind in charging else Decimal(0)


# --- payments ----------------------------------------------------------------------------------


class ShopItem(models.Model):
    """What packs and plans share: a name, a price in cents, and a place in the shop."""

    name = models.CharField(_("name"), max_length=100)
    price_cents = models.PositiveIntegerField(_("price (cents)"))
    currency = models.CharField(_("currency"), max_length=3, default="usd")
    active = models.BooleanField(_("on sale"), default=True)
    position = models.PositiveIntegerField(default=0)

    class Meta:
        abstract = True
        ordering = ["position", "price_cents"]

    def __str__(self) -> str:
        return self.name

    @property
    def price(self) -> Decimal:
        return Decimal(self.price_cents) / 100


class CreditPack(ShopItem):
    credits = money_field(_("credits"))

    class Meta(ShopItem.Meta):
        verbose_name = _("credit pack")
        constraints = [
            models.CheckConstraint(condition=Q(credits__gt=0), name="pack_credits_positive"),
            models.CheckConstraint(condition=Q(price_cents__gt=0), name="pack_price_positive"),
        ]


class MembershipPlan(ShopItem):
    """A tier bought for a number of days (one payment, no subscription), with its credits."""

    tier = models.ForeignKey(MembershipTier, on_delete=models.PROTECT, related_name="plans")
    days = models.PositiveIntegerField(_("days"), default=30)
    credits = money_field(_("credits included"))

    class Meta(ShopItem.Meta):
        verbose_name = _("membership plan")
        constraints = [
            models.CheckConstraint(condition=Q(credits__gte=0), name="plan_credits_not_negative"),
            models.CheckConstraint(condition=Q(price_cents__gt=0), name="plan_price_positive"),
            models.CheckConstraint(condition=Q(days__gt=0), name="plan_days_positive"),
        ]


class Purchase(models.Model):
    """One Checkout session: created before the user pays, fulfilled once by the webhook."""

    class Status(models.TextChoices):
        PENDING = "pending", _("Pending")
        PAID = "paid", _("Paid")
        EXPIRED = "expired", _("Expired")
        FAILED = "failed", _("Failed")

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="purchases"
    )
    pack = models.ForeignKey(CreditPack, null=True, blank=True, on_delete=models.PROTECT)
    plan = models.ForeignKey(MembershipPlan, null=True, blank=True, on_delete=models.PROTECT)
    # What was sold, copied at checkout: later price changes in admin do not alter this sale.
    credits = money_field(_("credits"))
    amount_cents = models.PositiveIntegerField(_("amount (cents)"))
    currency = models.CharField(_("currency"), max_length=3)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    stripe_session_id = models.CharField(max_length=255, unique=True, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    paid_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("purchase")
        constraints = [
            models.CheckConstraint(
                condition=Q(pack__isnull=False) | Q(plan__isnull=False), name="purchase_has_item"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.item} for {self.user} ({self.status})"

    @property
    def item(self) -> CreditPack | MembershipPlan:
        item = self.pack or self.plan
        assert item is not None, "the purchase_has_item constraint"
        return item


class StripeEvent(models.Model):
    """Each Stripe event id, recorded once: a redelivery finds its row and changes nothing."""

    event_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100)
    payload = models.JSONField()
    received_at = models.DateTimeField(default=timezone.now)
    outcome = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["-received_at"]
        verbose_name = _("Stripe event")

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


# --- redeem codes ------------------------------------------------------------------------------


class RedeemCode(models.Model):
    code = models.CharField(_("code"), max_length=64, unique=True, help_text=_("Stored upper-case"))
    credits = money_field(_("credits"))
    tier = models.ForeignKey(
        MembershipTier,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        verbose_name=_("tier upgrade"),
    )
    tier_days = models.PositiveIntegerField(
        _("tier days"), null=True, blank=True, help_text=_("Empty: the upgrade does not end")
    )
    expires_at = models.DateTimeField(_("expires"), null=True, blank=True)
    max_uses = models.PositiveIntegerField(_("max uses"), default=1)
    uses = models.PositiveIntegerField(_("uses"), default=0, editable=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-created_at"]
        verbose_name = _("redeem code")
        constraints = [
            models.CheckConstraint(condition=Q(uses__lte=F("max_uses")), name="code_uses_in_limit"),
            models.CheckConstraint(condition=Q(credits__gte=0), name="code_credits_not_negative"),
        ]

    def __str__(self) -> str:
        return self.code

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.code = self.code.strip().upper()
        super().save(*args, **kwargs)


class Redemption(models.Model):
    code = models.ForeignKey(RedeemCode, on_delete=models.PROTECT, related_name="redemptions")
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="redemptions"
    )
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name = _("redemption")
        constraints = [
            models.UniqueConstraint(fields=["code", "user"], name="one_redemption_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.code} by {self.user}"
