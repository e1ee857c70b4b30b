"""Which file in the model store a job's model names resolve to, for delivery to workers and
for the scheduler's fetch times: the job owner's own upload first, then a public stored model
(a staff upload, or a member's upload staff published); and the stored inputs a merge recipe
pins by hash (a merge job's, a virtual model's). Platform models in workers' models folders are
not here: workers hold those themselves."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Q, QuerySet
from django.db.models.expressions import RawSQL

from generation.models import CatalogEntry, ModelRecipe
from generation.scheduling.compiled import CompiledQuery
from gpu_worker.merge_rules import inputs_of
from gpu_worker.params import MergeInput, MergeParams


@dataclass(frozen=True)
class StoredModel:
    kind: str
    name: str
    sha256: str
    size_bytes: int
    part_of: str = ""  # an input of the virtual model of this recipe hash (computed from it)

    @classmethod
    def of(cls, entry: CatalogEntry) -> StoredModel:
        return cls(entry.kind, entry.name, entry.sha256, entry.size_bytes)


FIELDS = ("owner_id", "published", "kind", "name", "sha256", "size_bytes")


def virtual_recipe(entry: CatalogEntry) -> ModelRecipe | None:
    """The recipe of a virtual model (a checkpoint with no file, computed on the worker)."""
    if entry.stored_file_id is not None:
        return None
    recipe: ModelRecipe | None = getattr(entry, "recipe", None)  # None: no such row
    return recipe


def _available(owner_ids: RawSQL) -> QuerySet[CatalogEntry, tuple[Any, ...]]:
    """The stored models jobs of `owner_ids` may name: their own, the platform's, published."""
    return (
        CatalogEntry.objects.filter(stored_file__isnull=False, enabled=True)
        .filter(Q(owner_id__in=owner_ids) | Q(owner__isnull=True) | Q(published=True))
        .order_by("pk")
        .values_list(*FIELDS)
    )


_AVAILABLE = CompiledQuery(_available, owner_ids="int")  # each pass reads it


class StoredModels:
    """The stored models that jobs of `owner_ids` may name, and the stored inputs `recipes`
    pin, read in one query each."""

    def __init__(self, owner_ids: Iterable[int], recipes: Iterable[MergeParams] = ()) -> None:
        self.owner_ids = frozenset(owner_ids)
        rows = _AVAILABLE.rows(owner_ids=self.owner_ids)
        self.own: dict[tuple[int, str, str], StoredModel] = {}
        self.platform: dict[tuple[str, str], StoredModel] = {}
        self.published: dict[tuple[str, str], StoredModel] = {}
        for owner_id, published, kind, name, sha256, size in rows:
            model = StoredModel(kind, name, sha256, size)
            if owner_id is None:
                self.platform[(kind, name)] = model
            else:
                self.own[(owner_id, kind, name)] = model
                if published:
                    self.published.setdefault((kind, name), model)
        pins = _pins_of(recipes)
        self.pins = frozenset(pins)
        self.pinned: set[tuple[str, str, str]] = set()
        if pins:
            pinned = CatalogEntry.objects.filter(
                stored_file__isnull=False, sha256__in={sha for _k, _n, sha in pins}
            ).values_list("kind", "name", "sha256")
            self.pinned = set(pinned) & pins

    def covers(self, owner_ids: Iterable[int], recipes: Iterable[MergeParams] = ()) -> bool:
        """Whether these models answer for `owner_ids` and `recipes` as a read for those alone
        would (a read for more owners and recipes holds the same for each of them)."""
        return self.owner_ids.issuperset(owner_ids) and self.pins.issuperset(_pins_of(recipes))

    def find(self, owner_id: int, kind: str, name: str) -> StoredModel | None:
        key = (kind, name)
        return self.own.get((owner_id, *key)) or self.platform.get(key) or self.published.get(key)

    def embeddings_in(self, owner_id: int, text: str) -> list[StoredModel]:
        """Stored embeddings the prompt text names (A1111: the file name as a word)."""
        text = text.lower()
        names = {n for (o, k, n) in self.own if o == owner_id and k == "embedding"}
        names |= {n for (k, n) in [*self.platform, *self.published] if k == "embedding"}
        found = []
        for name in sorted(names):
            if re.search(rf"(?<!\w){re.escape(name.lower())}(?!\w)", text):
                model = self.find(owner_id, "embedding", name)
                if model is not None:
                    found.append(model)
        return found

    def inputs_of(self, merge: MergeParams, part_of: str = "") -> list[StoredModel]:
        """The inputs of a merge (or of a virtual model's recipe, `part_of` its hash) that lie
        in the store, as the recipe pins them: whoever stored them, since who may read them was
        checked when the merge was submitted or the recipe saved."""
        found = []
        for role, item in inputs_of(merge).items():
            pin = _pin(role, item)
            if pin in self.pinned:
                found.append(StoredModel(*pin, int(item["size_bytes"]), part_of))
        return found


def _pins_of(recipes: Iterable[MergeParams]) -> set[tuple[str, str, str]]:
    return {_pin(role, item) for merge in recipes for role, item in inputs_of(merge).items()}


def _pin(role: str, item: MergeInput) -> tuple[str, str, str]:
    return ("vae" if role == "vae" else "checkpoint", item["name"], item["sha256"])
