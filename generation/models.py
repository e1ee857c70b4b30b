"""Jobs, their images, the model catalogue and each user's generation settings.

The job row is the record of truth. Its state changes only through the `mark_*` methods below,
each a conditional UPDATE that returns whether this call won: a late or duplicated worker message
loses the race and changes nothing.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import connection, models
from django.db.models import Exists, F, OuterRef, Q, Value
from django.db.models.functions import Coalesce
from django.utils import timezone
from django.utils.translation import gettext_lazy as _
from rest_framework_tus.models import AbstractUpload

from generation import waiting_set
from generation.model_store import incoming_dir


def _random_name(folder: str, extension: str) -> str:
    # Unguessable, and nothing the user typed: the name never derives from a prompt or a file.
    return f"{folder}/{uuid.uuid4().hex}.{extension}"


def image_upload_to(instance: Any, filename: str) -> str:
    return _random_name("images", "png")


def thumbnail_upload_to(instance: Any, filename: str) -> str:
    return _random_name("images/thumbs", "webp")


def init_image_upload_to(instance: Any, filename: str) -> str:
    return _random_name("init", "png")


def mask_image_upload_to(instance: Any, filename: str) -> str:
    return _random_name("masks", "png")


PREVIEW_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


def preview_upload_to(instance: Any, filename: str) -> str:
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    return _random_name("previews", extension if extension in PREVIEW_EXTENSIONS else "png")


class CatalogEntryQuerySet(models.QuerySet["CatalogEntry"]):
    def public(self) -> CatalogEntryQuerySet:
        """Platform models and members' models staff published: what anyone may learn exists."""
        return self.filter(Q(owner__isnull=True) | Q(published=True))

    def owned_by(self, user: Any) -> CatalogEntryQuerySet:
        return self.filter(owner=user) if getattr(user, "pk", None) else self.none()

    def visible_to(self, user: Any) -> CatalogEntryQuerySet:
        """What `user` may pick: enabled public entries (checkpoints limited to those of their
        tier) and their own uploads. A member's private model is nobody else's, staff included:
        staff review it in the admin."""
        from accounts.tiers import allowed_model_names

        names = None if getattr(user, "is_staff", False) else allowed_model_names(user)
        return self.visible_with(getattr(user, "pk", None), names)

    def visible_with(self, owner: Any, names: Any) -> CatalogEntryQuerySet:
        """`visible_to` for a member's id (None: anonymous) and their tier's checkpoint names
        (None: every one); either may be an expression (a compiled query's parameter)."""
        own = Q(owner=owner) if owner is not None else Q(pk__in=[])
        public = Q(owner__isnull=True) | Q(published=True)
        if names is not None:
            public &= ~Q(kind=CatalogEntry.Kind.CHECKPOINT) | Q(name__in=names)
        return self.filter(Q(enabled=True) & (public | own))

    def usable_by(self, user: Any) -> CatalogEntryQuerySet:
        """Visible and present on some worker (or the local models folder)."""
        return self.visible_to(user).filter(available=True)

    def members_own(self, user: Any) -> CatalogEntryQuerySet:
        """A member's own models: uploads, merges with their file and virtual models (not a
        merge whose file is still being written)."""
        return self.owned_by(user).filter(
            Q(stored_file__isnull=False) | Q(recipe__isnull=False, enabled=True)
        )

    def checkpoints(self) -> CatalogEntryQuerySet:
        return self.filter(kind=CatalogEntry.Kind.CHECKPOINT)


class ModelFile(models.Model):
    """Bytes in the model store (`generation.model_store`), named by their sha256: uploaded once,
    referred to by any number of catalogue entries."""

    sha256 = models.CharField(max_length=64, unique=True)
    size_bytes = models.BigIntegerField()
    kind = models.CharField(max_length=16)
    family = models.CharField(max_length=16)
    architecture = models.CharField(max_length=64, blank=True)
    detail = models.JSONField(default=dict, blank=True)  # inpaint, lora_type, tokens
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.kind} {self.sha256[:10]}"


class ModelUpload(AbstractUpload):
    """A member's resumable (tus) upload in progress: drf-tus keeps offset and length; the bytes
    gather in the model store's incoming folder, never under the uploader's file name."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    entry = models.ForeignKey(
        "CatalogEntry", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    temporary_file_path: str | None  # drf-tus's field, declared for the type checker

    def get_or_create_temporary_file(self) -> str:
        if not self.temporary_file_path:
            # Beside the store, so adopting the finished file is a rename, not a copy.
            fd, path = tempfile.mkstemp(dir=incoming_dir(), prefix="tus-", suffix=".part")
            os.close(fd)
            self.temporary_file_path = path
            self.save()
        return self.temporary_file_path


class CatalogEntry(models.Model):
    """One model known to the platform; `name` is the catalogue key workers resolve. A platform
    model (no owner) lies in workers' models folders; a member's upload points at a ModelFile and
    is private to its owner until staff publish it."""

    class Kind(models.TextChoices):
        CHECKPOINT = "checkpoint", _("Checkpoint")
        LORA = "lora", _("LoRA")
        VAE = "vae", _("VAE")
        EMBEDDING = "embedding", _("Embedding")
        UPSCALER = "upscaler", _("Upscaler")
        CONTROLNET = "controlnet", _("ControlNet")
        FACE_RESTORER = "face_restorer", _("Face restoration")

    name = models.CharField(_("name"), max_length=200)
    kind = models.CharField(_("kind"), max_length=16, choices=Kind.choices)
    family = models.CharField(_("family"), max_length=16, default="unknown")
    filename = models.CharField(_("file name"), max_length=500, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    sha256 = models.CharField(max_length=64, blank=True)
    short_hash = models.CharField(max_length=10, blank=True)
    display_name = models.CharField(_("display name"), max_length=200, blank=True)
    description = models.TextField(_("description"), blank=True)
    enabled = models.BooleanField(_("enabled"), default=True)
    available = models.BooleanField(
        _("available"), default=True, help_text=_("Some worker or the local models folder has it")
    )
    is_demo = models.BooleanField(_("demo model"), default=False)
    cost_multiplier = models.DecimalField(max_digits=6, decimal_places=2, default=Decimal("1"))
    default_params = models.JSONField(
        default=dict,
        blank=True,
        help_text=_("sampler, scheduler, steps, cfg_scale, width, height, clip_skip"),
    )
    trigger_words = models.CharField(max_length=500, blank=True)
    native_scale = models.PositiveSmallIntegerField(
        _("native scale"),
        default=0,
        help_text=_("Upscalers: the factor one run of the model upscales by (0: unknown)"),
    )
    preview = models.ImageField(_("preview image"), upload_to=preview_upload_to, blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="own_models",
        help_text=_("The member who uploaded it; empty for platform models"),
    )
    stored_file = models.ForeignKey(
        ModelFile, null=True, blank=True, on_delete=models.PROTECT, related_name="entries"
    )
    published = models.BooleanField(
        _("published"),
        default=False,
        help_text=_("A member's model shown to others (within the tiers that allow it)"),
    )
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = CatalogEntryQuerySet.as_manager()

    class Meta:
        ordering = ["kind", "name"]
        verbose_name = _("catalogue entry")
        verbose_name_plural = _("catalogue entries")
        constraints = [
            models.UniqueConstraint(
                fields=["kind", "name"],
                condition=Q(owner__isnull=True),
                name="unique_catalog_name_per_kind",
            ),
            models.UniqueConstraint(
                fields=["owner", "kind", "name"],
                condition=Q(owner__isnull=False),
                name="unique_own_model_name_per_kind",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind}:{self.name}"

    @property
    def label(self) -> str:
        return self.display_name or self.name

    @property
    def is_public(self) -> bool:
        """A platform model, or a member's that staff published: its name may be shown."""
        return self.owner_id is None or self.published

    @property
    def public_label(self) -> str:
        """What pages others see call it: a member's private model is never named."""
        return self.label if self.is_public else str(_("a private model"))

    @property
    def title(self) -> str:
        """A1111's checkpoint title: `name.safetensors [shorthash]`."""
        base = self.filename.rsplit("/", 1)[-1] if self.filename else self.name
        return f"{base} [{self.short_hash}]" if self.short_hash else base


# The annotation Job.objects.with_awaited() adds.
AWAITED = "awaited_by_a_job"


class JobQuerySet(models.QuerySet["Job"]):
    def visible_to(self, user: Any) -> JobQuerySet:
        if getattr(user, "is_staff", False):
            return self.all()
        return self.filter(owner=user)

    def owned_by(self, user: Any) -> JobQuerySet:
        return self.filter(owner=user)

    def unfinished(self) -> JobQuerySet:
        return self.filter(status__in=Job.UNFINISHED)

    def queued(self) -> JobQuerySet:
        return self.filter(status=Job.Status.QUEUED)

    def running(self) -> JobQuerySet:
        return self.filter(status=Job.Status.RUNNING)

    def waiting(self) -> JobQuerySet:
        """Queued, held by no worker and waiting for no other job: what the scheduler may
        hand out."""
        return self.filter(status=Job.Status.QUEUED, worker_id="", after__isnull=True)

    def assigned(self) -> JobQuerySet:
        """Queued and handed to a worker that has not started it yet."""
        return self.filter(status=Job.Status.QUEUED).exclude(worker_id="")

    def with_awaited(self) -> JobQuerySet:
        """Each job with whether a job waits for it (Job.after), in the same query: see
        generation.class_images.waiting_trainings."""
        return self.annotate(**{AWAITED: Exists(Job.objects.filter(after=OuterRef("pk")))})

    def held_by(self, worker_id: str) -> JobQuerySet:
        """Running on, or assigned to, one worker."""
        return self.filter(status__in=Job.UNFINISHED, worker_id=worker_id)


# `Job.mark_assigned`'s claim, written out: every hand-out runs it, and the ORM's compiling of
# the conditional UPDATE cost several times the statement's own round trip on the dispatcher.
# Params: worker id, hand-out time, job id, the waiting status; then what the attempt must be.
CLAIM_IF_WAITING = (
    'UPDATE "generation_job" SET "attempt" = "attempt" + 1, "worker_id" = %s, '
    '"dispatched_at" = %s WHERE "id" = %s AND "status" = %s AND "worker_id" = \'\' '
    'AND "attempt" = '
)
_CLAIM = CLAIM_IF_WAITING + "%s"


class Job(models.Model):
    class Status(models.TextChoices):
        QUEUED = "queued", _("Queued")
        RUNNING = "running", _("Running")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")
        CANCELLED = "cancelled", _("Cancelled")

    class Mode(models.TextChoices):
        TXT2IMG = "txt2img", "txt2img"
        IMG2IMG = "img2img", "img2img"
        MERGE = "merge", _("merge")
        EXTRAS = "extras", "extras"  # upscale a finished image (generation.extras)
        TRAIN = "train", _("LoRA training")

    UNFINISHED = (Status.QUEUED, Status.RUNNING)
    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generation_jobs"
    )
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    mode = models.CharField(max_length=16, choices=Mode.choices, default=Mode.TXT2IMG)
    params = models.JSONField(help_text=_("Validated parameters; the seed is already resolved"))
    checkpoint = models.ForeignKey(CatalogEntry, on_delete=models.PROTECT, related_name="jobs")
    # A job that may start only after this one succeeds (a training after the txt2img job
    # making its class images); cleared when it may go. The scheduler never hands it out before.
    after = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.PROTECT, related_name="dependants"
    )
    init_image = models.ImageField(upload_to=init_image_upload_to, blank=True)
    mask_image = models.ImageField(
        upload_to=mask_image_upload_to,
        blank=True,
        help_text=_("Inpaint mask at the source's size, white = repaint"),
    )
    price = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    total_steps = models.PositiveIntegerField(default=0, help_text=_("Sampling steps, all images"))
    # Moves on at each hand-out to a worker and at each return to the queue, so every message
    # and event of an earlier hand-out is stale.
    attempt = models.PositiveIntegerField(default=0, help_text=_("Hand-outs and returns"))
    worker_id = models.CharField(
        max_length=200, blank=True, help_text=_("The worker it is assigned to or running on")
    )
    workers_lost = models.PositiveSmallIntegerField(
        default=0, help_text=_("Workers that died while running this job")
    )
    idempotency_key = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    dispatched_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    steps_done = models.PositiveIntegerField(default=0)
    timings = models.JSONField(default=dict, blank=True)

    objects = JobQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["status", "created_at"], name="job_status_created"),
            models.Index(fields=["owner", "-created_at"], name="job_owner_created"),
            # The waiting jobs (`JobQuerySet.waiting`), oldest first, and nothing else: the
            # scheduler's window is read in index order, so a pass reads its 100 rows whatever
            # the queue length, and the count of jobs ahead of one behind the window is an
            # index-only scan (bench_queue_scale). Partial, so that a claim by primary key
            # (`Job.mark_assigned`, whose conditions do not imply this one) can never be
            # planned as a walk along every waiting job: with stale statistics after a burst
            # of submissions, the former (status, worker_id, created_at, id) index was.
            models.Index(
                fields=["created_at", "id"],
                name="job_waiting_order",
                condition=Q(status="queued", worker_id="", after__isnull=True),
            ),
            # Recent usage (fair share) and the speed history read finished jobs by finish time:
            # a range of this index, not a scan of every job ever run.
            models.Index(fields=["finished_at"], name="job_finished_at"),
        ]
        constraints = [
            models.UniqueConstraint(
                fields=["owner", "idempotency_key"],
                condition=~Q(idempotency_key=""),
                name="unique_idempotency_key_per_owner",
            ),
        ]

    def __str__(self) -> str:
        return f"job {self.pk} ({self.status})"

    @property
    def is_finished(self) -> bool:
        return self.status in self.TERMINAL

    @property
    def image_count(self) -> int:
        return int(self.params.get("batch_size", 1)) * int(self.params.get("n_iter", 1))

    @property
    def queue_wait(self) -> timedelta | None:
        """From submission until a worker started it (None while it waits or if it never ran)."""
        return self.started_at - self.created_at if self.started_at else None

    @property
    def run_time(self) -> timedelta | None:
        """From start to finish on the worker."""
        if self.started_at and self.finished_at:
            return self.finished_at - self.started_at
        return None

    @property
    def hand_outs(self) -> int:
        """How many times it was handed to a worker: the attempt moves on at each hand-out and
        at each take-back (so that the old worker's late messages lose), from 0 at submission."""
        return (self.attempt + 1) // 2

    # --- transitions: each a conditional update; True only for the call that changed the row ---

    def _claim(
        self,
        from_statuses: tuple[str, ...],
        attempt: int | None = None,
        *,
        reload: bool = True,
        **changes: Any,
    ) -> bool:
        """`reload=False` spares the read-back: the instance takes the values written, and a
        field the database computed (an expression) is read on first use, as a deferred one."""
        rows = Job.objects.filter(pk=self.pk, status__in=from_statuses)
        if attempt is not None:
            rows = rows.filter(attempt=attempt)
        won = rows.update(**changes) == 1
        if won and reload:
            self.refresh_from_db()
        elif won:
            self._take_written(changes)
        return won

    def _take_written(self, changes: dict[str, Any]) -> None:
        for name, value in changes.items():
            if hasattr(value, "resolve_expression"):
                self.__dict__.pop(name, None)  # deferred: loaded when read
            else:
                setattr(self, name, value)

    def mark_assigned(self, worker_id: str) -> bool:
        """Hand a waiting job to `worker_id` as the next attempt. Two schedulers racing: only one
        gets it. The winner knows what it wrote (no re-read: its loaded checkpoint stays, for the
        message); the loser re-reads the job."""
        worker_id, now = worker_id[:200], timezone.now()
        pk = Job._meta.pk.get_db_prep_value(self.pk, connection)
        with connection.cursor() as cursor:
            cursor.execute(
                _CLAIM,
                [
                    worker_id,
                    connection.ops.adapt_datetimefield_value(now),
                    pk,
                    self.Status.QUEUED,
                    self.attempt,
                ],
            )
            won = cursor.rowcount == 1
        if not won:
            self.refresh_from_db()
            return False
        self.status, self.attempt = self.Status.QUEUED, self.attempt + 1
        self.worker_id, self.dispatched_at = worker_id, now
        return True

    def return_to_queue(
        self,
        *,
        from_statuses: tuple[str, ...] = ("queued",),
        attempt: int | None = None,
        worker_lost: bool = False,
    ) -> bool:
        """Take the job back from its worker (released, message lost, worker dead or draining).
        It keeps `created_at`, so it waits ahead of newer jobs; the attempt moves on, so whatever
        the old worker still sends about it is ignored."""
        changes: dict[str, Any] = {
            "status": self.Status.QUEUED,
            "worker_id": "",
            "attempt": F("attempt") + 1,
            "dispatched_at": None,
            "started_at": None,
            "steps_done": 0,
        }
        if worker_lost:
            changes["workers_lost"] = F("workers_lost") + 1
        rows = Job.objects.filter(
            pk=self.pk,
            status__in=from_statuses,
            attempt=self.attempt if attempt is None else attempt,
        )
        won = rows.update(**changes) == 1
        if won:
            self.refresh_from_db()
            if self.after_id is None:  # waiting again, in its first place
                waiting_set.enter_on_commit(self.pk, self.created_at)
        return won

    def mark_running(self, worker_id: str, attempt: int) -> bool:
        # No read-back: every value written is known here (the row was just read).
        return self._claim(
            (self.Status.QUEUED,),
            attempt,
            reload=False,
            status=self.Status.RUNNING,
            worker_id=worker_id[:200],
            started_at=timezone.now(),
        )

    def mark_succeeded(
        self,
        attempt: int,
        worker_id: str = "",
        timings: dict | None = None,
        steps_done: int | None = None,
    ) -> bool:
        # From QUEUED too: the 'started' event may be processed after 'succeeded' (two threads).
        # No read-back: recording a result is on every job's critical path.
        now = timezone.now()
        return self._claim(
            self.UNFINISHED,
            attempt,
            reload=False,
            status=self.Status.SUCCEEDED,
            finished_at=now,
            started_at=Coalesce(F("started_at"), Value(now)),
            worker_id=worker_id[:200] or F("worker_id"),
            timings=timings or {},
            steps_done=self.total_steps if steps_done is None else steps_done,
        )

    def mark_failed(
        self, error: str, attempt: int | None = None, timings: dict | None = None
    ) -> bool:
        return self._claim(
            self.UNFINISHED,
            attempt,
            status=self.Status.FAILED,
            finished_at=timezone.now(),
            error=error[:2000],
            timings=timings or F("timings"),
        )

    def mark_cancelled(
        self,
        attempt: int | None = None,
        steps_done: int | None = None,
        from_statuses: tuple[str, ...] | None = None,
    ) -> bool:
        now = timezone.now()
        changes: dict[str, Any] = {"status": self.Status.CANCELLED, "finished_at": now}
        if steps_done is not None:
            changes["steps_done"] = steps_done
        if steps_done:  # steps ran: it started, even if its 'started' is still on the way
            changes["started_at"] = Coalesce(F("started_at"), Value(now))
        return self._claim(from_statuses or self.UNFINISHED, attempt, **changes)

    def mark_cancel_requested(self) -> bool:
        """Ask its worker to stop it: running, or handed out (the worker may have started it
        already). Pinned to this attempt: a job taken back meanwhile is not touched."""
        return self._claim(self.UNFINISHED, self.attempt, cancel_requested_at=timezone.now())


class JobImageQuerySet(models.QuerySet["JobImage"]):
    def visible_to(self, user: Any) -> JobImageQuerySet:
        if getattr(user, "is_staff", False):
            return self.all()
        return self.filter(owner=user)


class JobImage(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="images")
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generated_images"
    )
    index = models.PositiveIntegerField()
    seed = models.BigIntegerField()
    infotext = models.TextField(blank=True)
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    file = models.ImageField(upload_to=image_upload_to)
    thumbnail = models.ImageField(upload_to=thumbnail_upload_to, blank=True)
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    objects = JobImageQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "index"]
        constraints = [
            models.UniqueConstraint(fields=["job", "index"], name="unique_image_index_per_job"),
        ]

    def __str__(self) -> str:
        return f"image {self.pk} of {self.job_id}"


class ModelRecipe(models.Model):
    """How a merged checkpoint is made (`gpu_worker.params.MergeParams`). Its entry is:
    - virtual: no file (`stored_file` empty), enabled; workers compute it from the recipe;
    - being written: no file yet, disabled (the name is reserved) while `job` runs;
    - a file: `stored_file` set by its merge or bake job, like an upload."""

    entry = models.OneToOneField(CatalogEntry, on_delete=models.CASCADE, related_name="recipe")
    params = models.JSONField(help_text=_("The merge parameters, inputs pinned by sha256"))
    recipe_hash = models.CharField(max_length=64)
    job = models.ForeignKey(
        Job,
        null=True,
        blank=True,
        on_delete=models.SET_NULL,
        related_name="+",
        help_text=_("The merge or bake job writing its file"),
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name = _("merge recipe")
        verbose_name_plural = _("merge recipes")

    def __str__(self) -> str:
        return f"recipe of {self.entry_id}"

    @property
    def is_virtual(self) -> bool:
        return self.entry.stored_file_id is None and self.entry.enabled


class UserGenerationSettings(models.Model):
    """Each user's own model choice and last parameters: never global."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="generation_settings"
    )
    default_checkpoint = models.ForeignKey(
        CatalogEntry, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    last_params = models.JSONField(default=dict, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name = _("generation settings")
        verbose_name_plural = _("generation settings")

    def __str__(self) -> str:
        return f"settings of {self.user_id}"

    @classmethod
    def for_user(cls, user: Any) -> UserGenerationSettings:
        obj, _created = cls.objects.get_or_create(user=user)
        return obj


class PromptStyleQuerySet(models.QuerySet["PromptStyle"]):
    def visible_to(self, user: Any) -> PromptStyleQuerySet:
        """A user's own styles and the shared ones; never another user's private style."""
        return self.filter(Q(owner=user) | Q(owner__isnull=True))

    def own(self, user: Any) -> PromptStyleQuerySet:
        return self.filter(owner=user)


class PromptStyle(models.Model):
    """A saved style (A1111's styles.csv row): `{prompt}` in its prompt marks where the user's
    prompt goes, else the style is appended after ", ". No owner: shared, published by staff."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.CASCADE,
        related_name="prompt_styles",
        help_text=_("Empty: a shared style every member sees"),
    )
    name = models.CharField(_("name"), max_length=100)
    prompt = models.TextField(_("prompt"), blank=True)
    negative_prompt = models.TextField(_("negative prompt"), blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    objects = PromptStyleQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        verbose_name = _("prompt style")
        verbose_name_plural = _("prompt styles")
        constraints = [
            models.UniqueConstraint(fields=["owner", "name"], name="unique_style_name_per_owner"),
            models.UniqueConstraint(
                fields=["name"], condition=Q(owner__isnull=True), name="unique_shared_style_name"
            ),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def shared(self) -> bool:
        return self.owner_id is None


# --- LoRA training (issue 20) ---------------------------------------------------------------


def training_image_upload_to(instance: Any, filename: str) -> str:
    return _random_name("training/images", "png")


def training_lora_upload_to(instance: Any, filename: str) -> str:
    return _random_name("training/loras", "safetensors")


def training_state_upload_to(instance: Any, filename: str) -> str:
    return _random_name("training/states", "pt")


def training_sample_upload_to(instance: Any, filename: str) -> str:
    return _random_name("training/samples", "png")


class TrainingDatasetQuerySet(models.QuerySet["TrainingDataset"]):
    def owned_by(self, user: Any) -> TrainingDatasetQuerySet:
        return self.filter(owner=user) if getattr(user, "pk", None) else self.none()


class TrainingDataset(models.Model):
    """A member's training images with their captions (kohya's layout: a caption per image)."""

    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="training_datasets"
    )
    name = models.CharField(_("name"), max_length=100)
    trigger_word = models.CharField(_("trigger word"), max_length=100, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = TrainingDatasetQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return self.name


class TrainingImage(models.Model):
    """One image, re-encoded as PNG without metadata, under a random name."""

    dataset = models.ForeignKey(TrainingDataset, on_delete=models.CASCADE, related_name="images")
    position = models.PositiveIntegerField(default=0)
    original_name = models.CharField(max_length=255)
    file = models.ImageField(upload_to=training_image_upload_to)
    sha256 = models.CharField(max_length=64, db_index=True)
    size_bytes = models.PositiveIntegerField()
    width = models.PositiveIntegerField()
    height = models.PositiveIntegerField()
    caption = models.TextField(_("caption"), blank=True)

    class Meta:
        ordering = ["position", "pk"]

    def __str__(self) -> str:
        return self.original_name


class TrainingEpoch(models.Model):
    """A finished epoch of a training job, recorded once (its charge with it): the LoRA as it
    stood, the state a resumed job starts from, the sample image and the losses."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="training_epochs")
    epoch = models.PositiveIntegerField()
    steps = models.PositiveIntegerField(help_text=_("Optimizer steps done by the epoch's end"))
    loss = models.FloatField(null=True)
    losses = models.JSONField(default=list)
    # DreamBooth's prior preservation: the loss on class images (mean, and one per step)
    prior_loss = models.FloatField(null=True, blank=True)
    prior_losses = models.JSONField(default=list, blank=True)
    lora = models.FileField(upload_to=training_lora_upload_to)
    lora_sha256 = models.CharField(max_length=64)
    lora_size_bytes = models.PositiveIntegerField(default=0)
    state = models.FileField(upload_to=training_state_upload_to)
    sample = models.ImageField(upload_to=training_sample_upload_to, blank=True)
    charged = models.DecimalField(max_digits=12, decimal_places=2, default=Decimal("0"))
    worker_id = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["job", "epoch"]
        constraints = [
            models.UniqueConstraint(fields=["job", "epoch"], name="unique_training_epoch"),
        ]

    def __str__(self) -> str:
        return f"epoch {self.epoch} of {self.job_id}"
