"""The credit ledger: the only code that changes a balance.

Each function writes one CreditEntry and moves the account's cached `balance` / `held` by the
same amounts in one transaction, with a conditional UPDATE (the database checks the balance
under the row lock) or, where it must read before writing, a row lock. So on Postgres, under any
concurrency, `balance == sum(amount)`, `held == sum(held_delta)`, and neither goes below zero
(a CHECK constraint backs that up).

`balance` is what the user can spend now. A hold moves a job's price from `balance` to `held`;
the job's one settlement empties the hold: the charged part is gone, the rest goes back to
`balance`. A settlement is a single entry (unique per job), so a repeated worker message can
never settle twice.

Lock order, the same on every path: the user row (only submission takes it), then the credit
account row, then new entries. Every row lock is FOR NO KEY UPDATE (`no_key=True`; a plain UPDATE
takes the same): the key never changes, and a FOR UPDATE lock would also block the KEY SHARE lock
that another transaction's deferred foreign-key check takes at commit (a JobImage or Job row
pointing at the user), which turned a submission racing a settlement into a deadlock.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_FLOOR, Decimal, InvalidOperation
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import Count, DecimalField, F, Q, Sum, Value
from django.db.models.functions import Coalesce, Round
from django.utils import timezone
from django.utils.translation import gettext as _

from accounts.models import CENT, CreditAccount, CreditEntry, MembershipTier
from accounts.queries import only_row
from accounts.verification import may_receive_grants

Kind = CreditEntry.Kind
ZERO = Decimal("0.00")


class LedgerError(ValueError):
    """A bad amount or request: nothing was written."""


class InsufficientCredits(Exception):
    """The balance cannot cover the price. Carries both so callers can answer 402 with them."""

    def __init__(self, balance: Decimal, price: Decimal) -> None:
        self.balance = balance
        self.price = price
        super().__init__(
            _("Not enough credits: this costs %(price)s and your balance is %(balance)s.")
            % {"price": price, "balance": balance}
        )

    def as_dict(self) -> dict[str, str]:
        return {"balance": str(self.balance), "price": str(self.price)}


def to_money(value: Any) -> Decimal:
    """A finite amount with at most two decimals, or LedgerError. Never rounds silently."""
    if isinstance(value, float):
        value = str(value)
    try:
        amount = Decimal(value) if not isinstance(value, Decimal) else value
    except (InvalidOperation, TypeError, ValueError):
        raise LedgerError(_("“%(value)s” is not an amount.") % {"value": value}) from None
    if not amount.is_finite():
        raise LedgerError(_("“%(value)s” is not an amount.") % {"value": value})
    if amount != amount.quantize(CENT):
        raise LedgerError(_("Amounts have at most two decimals."))
    if abs(amount) >= Decimal("1e10"):
        raise LedgerError(_("That amount is too large."))
    return amount.quantize(CENT)


# --- accounts ------------------------------------------------------------------------------------


def open_account(user: Any) -> CreditAccount:
    """Create the user's account on the default tier, with its welcome grant if the user may
    receive grants (see `grant_welcome` for one who may only later). Idempotent."""
    with transaction.atomic():
        tier = MembershipTier.objects.default()
        account, created = CreditAccount.objects.select_related("tier").get_or_create(
            user=user, defaults={"tier": tier}
        )
        if created and tier.welcome_grant > 0 and may_receive_grants(user):
            _write(
                account.pk,
                Kind.GRANT,
                tier.welcome_grant,
                key="welcome",
                reason=_("Welcome to Atelier"),
            )
            account.refresh_from_db(fields=["balance", "held"])
    return account


def grant_welcome(user: Any) -> CreditEntry | None:
    """The welcome grant, for a member who has just become eligible (verified their address).

    Once per account ever: the entry's key refuses a second, so calling this again, or after
    `open_account` already granted it, writes nothing and returns None."""
    account_for(user)
    tier = MembershipTier.objects.default()
    if tier.welcome_grant <= 0 or not may_receive_grants(user):
        return None
    return credit(
        user, tier.welcome_grant, Kind.GRANT, key="welcome", reason=_("Welcome to Atelier")
    )


def account_for(user: Any) -> CreditAccount:
    """The user's account, opened on first use (users made by createsuperuser or a script)."""
    account = only_row(CreditAccount.objects.select_related("tier").filter(pk=user.pk))
    return account if account is not None else open_account(user)


def _cents(expression: Any) -> Round:
    """Sums done in SQL, rounded to the cent. A no-op on PostgreSQL's numeric, but SQLite keeps
    decimals as binary floats: without it, 0.03 - 0.01 - 0.01 - 0.01 ends a hair below zero and
    the `held >= 0` check refuses the last capture."""
    return Round(expression, 2)


def _moved(field: str, delta: Decimal) -> Any:
    """`field + delta` for an UPDATE, to the cent. PostgreSQL's numeric adds cents exactly, so
    there the rounding is left out (one function less to compile on every hold)."""
    total = F(field) + delta
    return total if connection.vendor == "postgresql" else _cents(total)


def _write(
    account_id: int, kind: str, amount: Decimal, held_delta: Decimal = ZERO, **fields: Any
) -> CreditEntry:
    """Append the entry and move the cached totals by it. Call inside a transaction.

    A negative amount only applies if the balance covers it (checked by the UPDATE itself);
    otherwise InsufficientCredits and nothing is written."""
    rows = CreditAccount.objects.filter(pk=account_id)
    if amount < 0:
        rows = rows.filter(balance__gte=-amount)
    changed = rows.update(
        balance=_moved("balance", amount),
        held=_moved("held", held_delta),
        updated_at=timezone.now(),
    )
    if not changed:
        balance = CreditAccount.objects.filter(pk=account_id).values_list("balance", flat=True)
        raise InsufficientCredits(balance.first() or ZERO, -amount)
    return CreditEntry.objects.create(
        account_id=account_id, kind=kind, amount=amount, held_delta=held_delta, **fields
    )


def credit(
    user: Any, amount: Any, kind: str, *, reason: str = "", key: str = "", **refs: Any
) -> CreditEntry | None:
    """Add credits (grant, top-up, redeem, positive adjustment or refund).

    With a `key`, at most one entry per account ever carries it: a repeated call returns None
    and writes nothing (periodic grants, webhook redeliveries)."""
    value = to_money(amount)
    if value <= 0:
        raise LedgerError(_("The amount must be positive."))
    account = account_for(user)
    try:
        with transaction.atomic():
            return _write(account.pk, kind, value, reason=reason, key=key, **refs)
    except IntegrityError:
        if key and CreditEntry.objects.filter(account_id=account.pk, key=key).exists():
            return None
        raise


def adjust(user: Any, amount: Any, *, actor: Any, reason: str) -> CreditEntry:
    """A staff correction, positive or negative, always with a reason and who made it."""
    value = to_money(amount)
    if value == 0:
        raise LedgerError(_("An adjustment must change the balance."))
    if not reason.strip():
        raise LedgerError(_("Say why the balance is adjusted."))
    account = account_for(user)
    with transaction.atomic():
        return _write(account.pk, Kind.ADJUSTMENT, value, actor=actor, reason=reason.strip())


# --- holds and their settlement ----------------------------------------------------------------


def hold(user: Any, amount: Any, job_id: Any) -> CreditEntry | None:
    """Reserve a job's price; InsufficientCredits if the balance cannot cover it.

    Meant to run inside the transaction that inserts the job, so both commit or neither does.
    One UPDATE whose WHERE checks the balance: concurrent holds queue on the row lock and each
    re-checks the balance the previous one left."""
    price = to_money(amount)
    if price < 0:
        raise LedgerError(_("A price cannot be negative."))
    if price == 0:
        return None
    account_id = user.pk
    # No savepoint (two round trips saved per submission) and so no exception inside the
    # block: a refusal leaves the caller's transaction usable.
    with transaction.atomic(savepoint=False):
        held = _held(account_id, price, job_id)
        if held is None:
            # No account yet (opened now, with its welcome grant), or really not enough.
            account = account_for(user)
            held = _held(account_id, price, job_id)
        if held is not None:
            return held
        account.refresh_from_db(fields=["balance"])
    raise InsufficientCredits(account.balance, price)


def _held(account_id: int, price: Decimal, job_id: Any) -> CreditEntry | None:
    """The hold's entry, the balance checked and moved with it; None if it could not move."""
    if connection.vendor == "postgresql":
        return _held_in_one(account_id, price, job_id)
    if not _move_to_held(account_id, price):
        return None
    return CreditEntry.objects.create(
        account_id=account_id, kind=Kind.HOLD, amount=-price, held_delta=price, job_id=job_id
    )


def _held_in_one(account_id: int, price: Decimal, job_id: Any) -> CreditEntry | None:
    """`_held` in one statement (PostgreSQL): the entry is written from what the balance's
    UPDATE returned, so there is an entry only if the balance moved."""
    now = timezone.now()
    job = CreditEntry._meta.get_field("job_id").get_db_prep_value(job_id, connection)
    with connection.cursor() as cursor:
        cursor.execute(
            _HOLD_IN_ONE,
            [-price, price, now, account_id, price, Kind.HOLD, -price, price, job, "", now],
        )
        row = cursor.fetchone()
    if row is None:
        return None
    return _written(row[0], account_id, Kind.HOLD, -price, price, job_id, "", now)


def _written(
    pk: int,
    account_id: int,
    kind: str,
    amount: Decimal,
    held_delta: Decimal,
    job_id: Any,
    reason: str,
    created_at: Any,
) -> CreditEntry:
    """The entry a written-out INSERT made, as the ORM would have returned it."""
    entry = CreditEntry(
        pk=pk,
        account_id=account_id,
        kind=kind,
        amount=amount,
        held_delta=held_delta,
        job_id=job_id,
        reason=reason,
        created_at=created_at,
    )
    entry._state.adding, entry._state.db = False, connection.alias
    return entry


def _move_to_held(account_id: int, price: Decimal) -> bool:
    return bool(
        CreditAccount.objects.filter(pk=account_id, balance__gte=price).update(
            balance=_moved("balance", -price),
            held=_moved("held", price),
            updated_at=timezone.now(),
        )
    )


def capture(job_id: Any, amount: Any = None, *, reason: str = "") -> CreditEntry | None:
    """Settle the job's hold by charging it: all of it, or `amount` of it (the rest goes back).

    Returns the settlement entry, or None when the job has no hold or was already settled."""
    charge = None if amount is None else to_money(amount)
    if charge is not None and charge < 0:
        raise LedgerError(_("A charge cannot be negative."))
    return _settle(job_id, charge, reason)


def release(job_id: Any, *, reason: str = "") -> CreditEntry | None:
    """Settle the job's hold by giving all of it back. None if nothing was held or settled."""
    return _settle(job_id, ZERO, reason)


def pro_rata(price: Decimal, steps_done: int, total_steps: int) -> Decimal:
    """The part of `price` a job cancelled mid-run pays: the share of its steps that ran,
    rounded down to the cent (the pricing page states this rule)."""
    if total_steps <= 0 or steps_done <= 0:
        return ZERO
    share = Decimal(min(steps_done, total_steps)) / Decimal(total_steps)
    return (price * share).quantize(CENT, rounding=ROUND_FLOOR)


def capture_part(job_id: Any, amount: Any, *, key: str, reason: str = "") -> CreditEntry | None:
    """Charge `amount` of a job's hold before the job ends (a finished training epoch).

    Once per `key` (e.g. the job and epoch): a repeated call writes nothing and returns None;
    so does a call after the job's settlement. Never more than is still held: the part is cut
    to what is left. The job's later settlement settles only what remains held."""
    charge = to_money(amount)
    if charge < 0:
        raise LedgerError(_("A charge cannot be negative."))
    with transaction.atomic():
        locked = _lock_open_hold(job_id)
        if locked is None:
            return None
        account_id, held = locked
        if CreditEntry.objects.filter(account_id=account_id, key=key).exists():
            return None
        part = min(charge, held)
        if part <= 0:
            return None
        return _write(
            account_id, Kind.PART_CAPTURE, ZERO, -part, job_id=job_id, key=key, reason=reason
        )


def charged_so_far(job_id: Any) -> Decimal:
    """What a job has been charged: its parts, plus its settlement's charge once settled."""
    total = ZERO
    for entry in CreditEntry.objects.filter(
        job_id=job_id, kind__in=(Kind.PART_CAPTURE, *CreditEntry.SETTLEMENTS)
    ):
        total += -entry.held_delta if entry.kind == Kind.PART_CAPTURE else entry.charged
    return total


def _lock_open_hold(job_id: Any) -> tuple[int, Decimal] | None:
    """(account id, amount still held) of a job's unsettled hold, with the account row locked;
    None when the job has no hold or was settled. Call inside a transaction. Two round trips."""
    job = CreditEntry._meta.get_field("job_id").get_db_prep_value(job_id, connection)
    no_key = connection.features.has_select_for_no_key_update
    with connection.cursor() as cursor:
        # The account row lock, found through the job's hold in the same statement (the hold
        # is read, not locked: it never changes). It serialises settlements: the second of two
        # racing messages sees the first one's entry and stops. The unique constraint would
        # refuse it too.
        cursor.execute(_LOCK_HOLD_ACCOUNT_PG if no_key else _LOCK_HOLD_ACCOUNT, [job, Kind.HOLD])
        row = cursor.fetchone()
        if row is None:
            return None
        # Read after the lock (a new statement, so a new snapshot under READ COMMITTED):
        # settled already? and what is still held, the hold less the parts charged so far.
        kinds = [*CreditEntry.SETTLEMENTS, Kind.HOLD, Kind.PART_CAPTURE]
        cursor.execute(_SETTLED_AND_HELD, [*kinds, job])
        settled, held = cursor.fetchone()
    if settled:
        return None
    return int(row[0]), _decimal(held)


def _settle(job_id: Any, charge: Decimal | None, reason: str) -> CreditEntry | None:
    # No savepoint (two round trips saved per settlement): every caller settles inside its
    # job's terminal transition and lets an error roll all of it back.
    with transaction.atomic(savepoint=False):
        locked = _lock_open_hold(job_id)
        if locked is None:
            return None
        account_id, held = locked
        charged = held if charge is None else min(charge, held)
        returned = held - charged
        kind = Kind.CAPTURE if charged > 0 else Kind.RELEASE
        now = timezone.now()
        if connection.vendor == "postgresql":  # the UPDATE and the entry in one statement
            job = CreditEntry._meta.get_field("job_id").get_db_prep_value(job_id, connection)
            with connection.cursor() as cursor:
                cursor.execute(
                    _SETTLE_IN_ONE,
                    [returned, -held, now, account_id, kind, returned, -held, job, reason, now],
                )
                (pk,) = cursor.fetchone()
            return _written(pk, account_id, kind, returned, -held, job_id, reason, now)
        # What `_write` does, with the UPDATE written out (nothing is taken from the balance,
        # so there is no balance to check).
        with connection.cursor() as cursor:
            cursor.execute(
                _MOVE_SETTLED,
                [
                    returned,
                    -held,
                    connection.ops.adapt_datetimefield_value(now),
                    account_id,
                ],
            )
        return CreditEntry.objects.create(
            account_id=account_id,
            kind=kind,
            amount=returned,
            held_delta=-held,
            job_id=job_id,
            reason=reason,
        )


# A settlement's three statements, written out: every job's end runs them, and the ORM spent
# several times the database's own time compiling them (about 2 ms of CPU per settlement on
# PostgreSQL, against ~0.4 ms for the three round trips). The same on both databases but the
# row lock (SQLite locks the whole file for the transaction anyway).
_LOCK_HOLD_ACCOUNT = (
    'SELECT "user_id" FROM "accounts_creditaccount" WHERE "user_id" = '
    '(SELECT "account_id" FROM "accounts_creditentry" WHERE "job_id" = %s AND "kind" = %s '
    "LIMIT 1)"
)
_LOCK_HOLD_ACCOUNT_PG = _LOCK_HOLD_ACCOUNT + " FOR NO KEY UPDATE"
_SETTLED_AND_HELD = (
    'SELECT COUNT(CASE WHEN "kind" IN (%s, %s) THEN 1 END), '
    'COALESCE(SUM(CASE WHEN "kind" IN (%s, %s) THEN "held_delta" END), 0) '
    'FROM "accounts_creditentry" WHERE "job_id" = %s'
)
# ROUND as `_cents`: SQLite keeps decimals as binary floats.
_MOVE_SETTLED = (
    'UPDATE "accounts_creditaccount" SET "balance" = ROUND("balance" + %s, 2), '
    '"held" = ROUND("held" + %s, 2), "updated_at" = %s WHERE "user_id" = %s'
)
# PostgreSQL: the account's UPDATE and the new entry in one statement (a round trip and the
# ORM's INSERT compiling saved on every submission and every job's end): the entry is inserted
# from the UPDATE's RETURNING, so it exists only if the account moved. numeric adds cents
# exactly: no ROUND. The columns left out (purchase, redemption, actor) are NULL.
_ENTRY_FROM_MOVED = (
    'INSERT INTO "accounts_creditentry" ("account_id", "kind", "amount", "held_delta", '
    '"job_id", "reason", "key", "created_at") '
    'SELECT "user_id", %s, %s, %s, %s, %s, \'\', %s FROM "moved" RETURNING "id"'
)
_SETTLE_IN_ONE = (
    'WITH "moved" AS (UPDATE "accounts_creditaccount" SET "balance" = "balance" + %s, '  # noqa: S608 (constant SQL)
    '"held" = "held" + %s, "updated_at" = %s WHERE "user_id" = %s RETURNING "user_id") '
    + _ENTRY_FROM_MOVED
)
_HOLD_IN_ONE = (
    'WITH "moved" AS (UPDATE "accounts_creditaccount" SET "balance" = "balance" + %s, '  # noqa: S608 (constant SQL)
    '"held" = "held" + %s, "updated_at" = %s WHERE "user_id" = %s AND "balance" >= %s '
    'RETURNING "user_id") ' + _ENTRY_FROM_MOVED
)


def _decimal(value: Any) -> Decimal:
    """A sum read back in cents: PostgreSQL's numeric as it is, SQLite's float through its
    shortest repr (as Django's own converter reads a decimal column)."""
    if isinstance(value, float):
        value = repr(value)
    return Decimal(value).quantize(CENT)


def refund(job_id: Any, amount: Any, *, actor: Any, reason: str) -> CreditEntry:
    """Give back up to what a settled job was charged (staff goodwill after a bad result)."""
    value = to_money(amount)
    if value <= 0:
        raise LedgerError(_("The amount must be positive."))
    if not reason.strip():
        raise LedgerError(_("Say why the job is refunded."))
    with transaction.atomic():
        settlement = CreditEntry.objects.filter(
            job_id=job_id, kind__in=CreditEntry.SETTLEMENTS
        ).first()
        if settlement is None:
            raise LedgerError(_("That job has no charge to refund."))
        CreditAccount.objects.select_for_update(no_key=True).filter(
            pk=settlement.account_id
        ).first()
        refunded = CreditEntry.objects.filter(job_id=job_id, kind=Kind.REFUND).aggregate(
            total=Coalesce(Sum("amount"), Value(ZERO, output_field=DecimalField()))
        )["total"]
        if refunded + value > charged_so_far(job_id):
            raise LedgerError(_("A refund cannot exceed what the job was charged."))
        return _write(
            settlement.account_id,
            Kind.REFUND,
            value,
            job_id=job_id,
            actor=actor,
            reason=reason.strip(),
        )


# --- the invariants check_ledger enforces --------------------------------------------------------


@dataclass(frozen=True)
class Violation:
    what: str
    detail: str

    def __str__(self) -> str:
        return f"{self.what}: {self.detail}"


def find_violations() -> list[Violation]:
    """Everything that must hold of the ledger; an empty list when it is sound."""
    problems: list[Violation] = []
    money = DecimalField(max_digits=14, decimal_places=2)
    zero = Value(ZERO, output_field=money)
    accounts = CreditAccount.objects.annotate(
        entry_sum=Coalesce(_cents(Sum("entries__amount")), zero),
        held_sum=Coalesce(_cents(Sum("entries__held_delta")), zero),
    )
    for account in accounts.filter(
        ~Q(balance=F("entry_sum")) | ~Q(held=F("held_sum")) | Q(balance__lt=0) | Q(held__lt=0)
    ):
        problems.append(
            Violation(
                "account",
                f"user {account.pk}: balance {account.balance} (entries say "
                f"{account.entry_sum}), held {account.held} (entries say {account.held_sum})",
            )
        )

    per_job = (
        CreditEntry.objects.filter(job_id__isnull=False)
        .values("job_id")
        .annotate(
            holds=Count("pk", filter=Q(kind=Kind.HOLD)),
            settlements=Count("pk", filter=Q(kind__in=CreditEntry.SETTLEMENTS)),
            accounts=Count("account_id", distinct=True),
            held=Coalesce(_cents(Sum("held_delta")), zero),
            hold_amount=Coalesce(_cents(Sum("amount", filter=Q(kind=Kind.HOLD))), zero),
            parts=Coalesce(_cents(Sum("held_delta", filter=Q(kind=Kind.PART_CAPTURE))), zero),
            returned=Coalesce(
                _cents(Sum("amount", filter=Q(kind__in=CreditEntry.SETTLEMENTS))), zero
            ),
            refunded=Coalesce(_cents(Sum("amount", filter=Q(kind=Kind.REFUND))), zero),
        )
    )
    open_jobs = set()
    for job in per_job:
        job_id = job["job_id"]
        if job["holds"] > 1 or job["settlements"] > 1:
            problems.append(
                Violation(
                    "job", f"{job_id}: {job['holds']} holds, {job['settlements']} settlements"
                )
            )
        if job["accounts"] > 1:
            problems.append(Violation("job", f"{job_id}: entries on {job['accounts']} accounts"))
        if job["settlements"] and not job["holds"]:
            problems.append(Violation("job", f"{job_id}: settled without a hold"))
        if job["settlements"] and job["held"] != 0:
            problems.append(Violation("job", f"{job_id}: settled but {job['held']} still held"))
        if not job["settlements"] and job["held"] != -job["hold_amount"] + job["parts"]:
            problems.append(
                Violation(
                    "job", f"{job_id}: open hold of {-job['hold_amount']} but {job['held']} held"
                )
            )
        if job["parts"] and not job["holds"]:
            problems.append(Violation("job", f"{job_id}: charged parts without a hold"))
        if job["returned"] > -job["hold_amount"] or job["returned"] < 0:
            problems.append(
                Violation(
                    "job", f"{job_id}: gave back {job['returned']} of a {-job['hold_amount']} hold"
                )
            )
        charged = -job["hold_amount"] - job["returned"] if job["settlements"] else ZERO
        if job["refunded"] > charged:
            problems.append(
                Violation("job", f"{job_id}: refunded {job['refunded']} of {charged} charged")
            )
        if job["holds"] and not job["settlements"]:
            open_jobs.add(job_id)

    problems.extend(_job_status_violations(open_jobs))
    return problems


def _job_status_violations(open_holds: set[Any]) -> list[Violation]:
    """A finished job with an open hold: its settlement was lost."""
    from django.apps import apps

    if not apps.is_installed("generation") or not open_holds:
        return []
    job_model = apps.get_model("generation", "Job")
    finished = job_model.objects.filter(
        pk__in=open_holds, status__in=job_model.TERMINAL
    ).values_list("pk", flat=True)
    return [Violation("job", f"{pk}: finished with its hold still open") for pk in finished]
