"""Fixed-shape reads compiled once (`accounts.compiled_queries`) give the rows, counts and
instances their querysets give, with Django's conversions (JSON, datetimes) and select_related
rows, take the values given at each run (an id, a token's hash, id lists, times) as parameters,
and see every change to the data made after they were compiled. On SQLite and PostgreSQL (with
DATABASE_URL)."""

from __future__ import annotations

import pytest
from django.db import connection, transaction
from django.db.models import Model
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.compiled_queries import CompiledQuery
from accounts.models import TOKEN_BY_HASH, ApiToken, User, hash_token
from generation.models import Job, ModelRecipe
from generation.scheduling.claims import _PLANNED
from generation.scheduling.estimates import (
    HISTORY_FIELDS,
    HISTORY_ROWS,
    _history_rows,
    _recent_history,
)
from generation.scheduling.inputs import _in_flight, _waiting_window, in_flight_jobs
from generation.stored_models import _AVAILABLE, _available
from generation.submission import LOCK_USER, UNFINISHED, submit_job
from tests.generation.conftest import SMALL
from tests.generation.own_model_uploads import upload
from tests.model_file_builder import sd1_lora

pytestmark = pytest.mark.django_db

IN_FLIGHT_VALUES = ("pk", "owner_id", "status", "worker_id", "params", "mode", "created_at")


def instance_values(job: Job) -> tuple:
    checkpoint = job.checkpoint
    recipe = getattr(checkpoint, "recipe", None)
    return (
        *(getattr(job, name) for name in IN_FLIGHT_VALUES),
        job.dispatched_at,
        job.started_at,
        (checkpoint.pk, checkpoint.name, checkpoint.sha256, checkpoint.stored_file_id),
        (recipe.recipe_hash, recipe.params) if recipe is not None else None,
    )


def test_the_waiting_window_reads_as_its_queryset_after_the_queue_changed(alice, bob, catalogue):
    window = CompiledQuery(_waiting_window)
    submit_job(alice, SMALL)
    assert window.rows(10) == list(_waiting_window(10))  # compiled here
    jobs = [submit_job(bob, {**SMALL, "width": 72}), submit_job(alice, SMALL)]
    assert jobs[0].mark_assigned("gpu-1")
    rows = window.rows(10)
    assert rows == list(_waiting_window(10))
    assert [row[0] for row in rows] == [
        job.pk for job in Job.objects.waiting().order_by("created_at")
    ]
    assert isinstance(rows[0][5], dict) and rows[0][2].tzinfo is not None  # JSON, aware time
    assert window.rows(1) == list(_waiting_window(1))  # another LIMIT: compiled apart


def test_the_in_flight_jobs_read_as_their_queryset_with_checkpoint_and_recipe(
    alice, bob, catalogue
):
    assert in_flight_jobs() == []
    ModelRecipe.objects.create(
        entry=catalogue["b"], recipe_hash="ab" * 32, params={"mode": "weighted_sum"}
    )
    running = submit_job(alice, SMALL)
    assert running.mark_assigned("gpu-1") and running.mark_running("gpu-1", running.attempt)
    handed = submit_job(bob, {**SMALL, "checkpoint": "model-b"})
    assert handed.mark_assigned("gpu-1")
    submit_job(alice, SMALL)  # waiting: not in flight

    compiled = in_flight_jobs()
    expected = list(_in_flight())
    assert [instance_values(job) for job in compiled] == [instance_values(job) for job in expected]
    assert [job.pk for job in compiled] == [running.pk, handed.pk]
    assert compiled[1].checkpoint.recipe.params == {"mode": "weighted_sum"}


def test_an_id_list_is_one_parameter_whatever_its_length(
    alice, bob, carol, alice_api, catalogue, settings, tmp_path
):
    """The stored models members may name, and the jobs a plan hands out, by id lists of any
    length through one compiled query."""
    settings.MODEL_STORE_DIR = tmp_path / "model-store"
    upload(alice_api, sd1_lora(), "alice-lora")
    for owners in ([], [bob.pk], [alice.pk, bob.pk, carol.pk]):
        assert _AVAILABLE.rows(owner_ids=owners) == list(_available(owners))  # type: ignore[arg-type]
    assert any(row[0] == alice.pk for row in _AVAILABLE.rows(owner_ids=[alice.pk]))
    jobs = [submit_job(alice, SMALL), submit_job(bob, SMALL), submit_job(carol, SMALL)]
    for chosen in (jobs[:1], jobs):
        ids = [str(job.pk) for job in chosen]
        planned = {job.pk: job for job in _PLANNED.objects(ids=ids)}
        expected = Job.objects.select_related("checkpoint__recipe").in_bulk(ids)
        assert planned.keys() == expected.keys()
        for pk, job in planned.items():
            assert (job.params, job.attempt, job.checkpoint.name, job.created_at) == (
                expected[pk].params,
                expected[pk].attempt,
                expected[pk].checkpoint.name,
                expected[pk].created_at,
            )


def test_the_speed_history_reads_as_its_queryset_from_any_time(alice, catalogue):
    """A time given at each run (the history window's start, "finished since") is a parameter,
    not compiled in."""
    jobs = []
    for i in range(3):
        job = submit_job(alice, {**SMALL, "width": 64 + 8 * i})
        assert job.mark_assigned("gpu-1") and job.mark_running("gpu-1", job.attempt)
        assert job.mark_succeeded(job.attempt, "gpu-1", {"total_s": 2.0, "sampling_s": 1.5})
        jobs.append(job)
    middle = Job.objects.get(pk=jobs[1].pk).finished_at
    for since in (None, middle, timezone.now()):
        expected = _recent_history()
        if since is not None:
            expected = expected.filter(finished_at__gte=since)
        assert _history_rows(since) == list(
            expected.values(*HISTORY_FIELDS, "checkpoint_id", "pk")[:HISTORY_ROWS]
        )
    assert len(_history_rows(middle)) == 2


def stored_values(obj: Model) -> list[tuple[str, object]]:
    return [(field.attname, getattr(obj, field.attname)) for field in obj._meta.concrete_fields]


def test_a_token_reads_with_its_user_account_and_tier_in_one_query(
    alice, bob, django_assert_num_queries
):
    """Every API call's read: the hash given at each run, the related rows attached as
    select_related attaches them; a revoked token is found no more."""
    token, secret = ApiToken.issue(alice, "script")
    _bobs, bobs_secret = ApiToken.issue(bob, "script")
    expected = ApiToken.objects.select_related("user__credit_account__tier").get(pk=token.pk)
    with django_assert_num_queries(1):
        [found] = TOKEN_BY_HASH.objects(digest=hash_token(secret))
        account = found.user.credit_account
    assert stored_values(found) == stored_values(expected)
    assert stored_values(found.user) == stored_values(expected.user)
    assert stored_values(account) == stored_values(expected.user.credit_account)
    assert stored_values(account.tier) == stored_values(expected.user.credit_account.tier)
    assert [t.user for t in TOKEN_BY_HASH.objects(digest=hash_token(bobs_secret))] == [bob]
    assert TOKEN_BY_HASH.objects(digest=hash_token("atl_no-such-secret")) == []
    token.revoke()
    assert TOKEN_BY_HASH.objects(digest=hash_token(secret)) == []
    assert ApiToken.authenticate(secret) is None and ApiToken.authenticate(bobs_secret)


def test_a_submission_locks_its_members_row_and_no_other(alice, bob):
    """FOR NO KEY UPDATE where the database has row locks (accounts/ledger.py: lock order),
    compiled within the submission's transaction; the member's id given at each run."""
    with transaction.atomic(), CaptureQueriesContext(connection) as queries:
        assert LOCK_USER.rows(pk=alice.pk) == [(alice.pk,)]
        assert LOCK_USER.rows(pk=bob.pk) == [(bob.pk,)]
        expected = (
            User.objects.select_for_update(no_key=True)
            .filter(pk=bob.pk)
            .order_by()
            .values_list("pk")
        )
        assert list(expected) == LOCK_USER.rows(pk=bob.pk)
    selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
    locks = [sql.endswith("FOR NO KEY UPDATE") for sql in selects]  # not savepoints
    assert locks == [connection.features.has_select_for_update] * 4  # the queryset's too


def test_the_unfinished_count_follows_each_members_jobs(alice, bob, catalogue):
    def counts() -> tuple[int, int]:
        return UNFINISHED.count(owner=alice.pk), UNFINISHED.count(owner=bob.pk)

    assert counts() == (0, 0)
    jobs = [submit_job(alice, SMALL), submit_job(alice, SMALL), submit_job(bob, SMALL)]
    assert counts() == (2, 1)
    assert jobs[0].mark_assigned("gpu-1") and jobs[0].mark_running("gpu-1", jobs[0].attempt)
    assert counts() == (2, 1)  # running is unfinished
    assert jobs[0].mark_succeeded(jobs[0].attempt, "gpu-1", {"total_s": 2.0, "sampling_s": 1.5})
    assert counts() == (1, 1)
    assert counts() == tuple(Job.objects.owned_by(u).unfinished().count() for u in (alice, bob))
    with pytest.raises(TypeError):  # a values_list queryset has rows, not instances
        UNFINISHED.objects(owner=alice.pk)


def test_a_name_in_the_catalogue_reads_as_visible_to_for_every_kind_of_member(
    alice, bob, catalogue
):
    """The submission's lookup of a model by name (`NAMED_ENTRIES`) finds what
    `CatalogEntry.objects.visible_to` finds: for a member of a tier limited to some models,
    one of every model, staff, with another member's private model of the same name."""
    from accounts.models import MembershipTier
    from accounts.tiers import allowed_model_names, set_tier
    from generation.models import CatalogEntry
    from generation.submission import NAMED_ENTRIES

    CatalogEntry.objects.create(
        name="model-b", kind="checkpoint", family="sd1", owner=bob, sha256="b" * 64
    )
    limited = MembershipTier.objects.create(
        name="Basic", slug="basic", rank=1, all_models=False, allowed_models=["model-a"]
    )
    set_tier(alice, limited)
    staff = User.objects.create_user("staff", "staff@example.com", "x" * 20, is_staff=True)
    for user in (alice, bob, staff):
        names = None if user.is_staff else allowed_model_names(user)
        for kind, name in [("checkpoint", n) for n in ("model-a", "model-b", "model-off")] + [
            ("lora", "style")
        ]:
            expected = CatalogEntry.objects.visible_to(user).filter(kind=kind, name=name)
            found = NAMED_ENTRIES.objects(
                False, names is None, owner=user.pk, kind=kind, name=name, names=names or []
            )
            assert sorted(e.pk for e in found) == sorted(e.pk for e in expected), (user, name)
    assert not NAMED_ENTRIES.objects(
        False, False, owner=alice.pk, kind="checkpoint", name="model-b", names=["model-a"]
    )


on_postgresql = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="PostgreSQL's literals and prepared statements"
)


@on_postgresql
def test_values_compiled_in_are_written_as_literals_and_read_back_exactly(alice, bob):
    """On PostgreSQL a compiled query keeps only the given values as parameters; the others
    are quoted into its SQL, and a quote, a percent sign or a comment marker in one stays
    data."""
    odd = "50% o'clock; -- %s"
    User.objects.filter(pk=alice.pk).update(first_name=odd)
    named = CompiledQuery(
        lambda owner: User.objects.filter(first_name=odd, pk=owner).values_list("pk"),
        owner="value",
    )
    assert named.rows(owner=alice.pk) == [(alice.pk,)]
    assert named.rows(owner=bob.pk) == []
    compiled, _ = named._compiled_for(())
    assert len(compiled.params) == 1  # the given owner; the name is in the SQL


@on_postgresql
def test_the_dispatchers_waiting_read_is_prepared_once_on_its_connection(alice, catalogue):
    """Its constants written in, the waiting read has no parameter left: after the prepare
    threshold's runs the connection holds it as a prepared statement (planned once), and it
    still sees each new job."""
    from django.conf import settings

    window = CompiledQuery(_waiting_window)
    for _ in range(settings.DATABASE_PREPARE_THRESHOLD + 1):
        window.rows(10)
    compiled, _ = window._compiled_for((10,))
    assert compiled.params == ()
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any('"generation_job"."status" = \'queued\'' in sql for sql in prepared), prepared
    job = submit_job(alice, SMALL)
    assert [row[0] for row in window.rows(10)] == [job.pk]
