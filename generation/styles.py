"""Saved prompt styles: apply them to a request, manage a user's own, import and export A1111's
styles.csv. The page, REST and the A1111 API all go through here.

Applying follows A1111's modules/styles.py: a style whose prompt holds `{prompt}` gets the user's
prompt there, any other is appended after ", " (empty parts dropped); styles apply in the order
named, and the negative prompt works the same way. A user names their own styles and the shared
ones (their own win on a name clash); another user's private style does not exist for them.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from typing import Any

from django.db import IntegrityError, transaction

from generation.models import PromptStyle

PLACEHOLDER = "{prompt}"
CSV_COLUMNS = ("name", "prompt", "negative_prompt")
MAX_NAME = 100
MAX_TEXT = 2000
MAX_STYLES_PER_USER = 500
MAX_CSV_BYTES = 1 << 20


class StyleError(Exception):
    """A style request refused; `field` names what to fix, `status` the HTTP answer."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.field, self.message, self.status = field, message, status

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "detail": self.message}


def merge_prompt(style_text: str, prompt: str) -> str:
    if PLACEHOLDER in style_text:
        return style_text.replace(PLACEHOLDER, prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


def find_styles(user: Any, names: Iterable[str]) -> list[PromptStyle]:
    """The styles a request names, in its order; StyleError for a name the user cannot use."""
    wanted = list(names)
    visible = {}
    for style in PromptStyle.objects.visible_to(user).filter(name__in=wanted):
        if style.name not in visible or not style.shared:  # the user's own wins
            visible[style.name] = style
    for name in wanted:
        if name not in visible:
            known = sorted(PromptStyle.objects.visible_to(user).values_list("name", flat=True))
            listed = ", ".join(known) if known else "you have no saved styles"
            raise StyleError("styles", f"unknown style {name!r}; yours: {listed}")
    return [visible[name] for name in wanted]


def apply_styles(user: Any, names: Any, prompt: str, negative: str) -> tuple[str, str]:
    """(prompt, negative prompt) with the named styles applied."""
    if names in (None, "", []):
        return prompt, negative
    if isinstance(names, str):  # one name, as a form or a query string sends it
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise StyleError("styles", "styles must be a list of style names", 400)
    for style in find_styles(user, names):
        prompt = merge_prompt(style.prompt, prompt)
        negative = merge_prompt(style.negative_prompt, negative)
    return prompt, negative


# --- managing a user's styles ----------------------------------------------------------------


def _clean(data: dict[str, Any], partial: bool) -> dict[str, str]:
    fields: dict[str, str] = {}
    for name, limit in (("name", MAX_NAME), ("prompt", MAX_TEXT), ("negative_prompt", MAX_TEXT)):
        if name not in data:
            if name == "name" and not partial:
                raise StyleError("name", "name is required", 400)
            continue
        value = data[name] if data[name] is not None else ""
        if not isinstance(value, str):
            raise StyleError(name, f"{name} must be text", 400)
        if name == "name":
            value = value.strip()
            if not value:
                raise StyleError("name", "name must not be empty", 400)
        if len(value) > limit:
            raise StyleError(name, f"{name} is {len(value)} characters; the limit is {limit}")
        fields[name] = value
    return fields


def create_style(user: Any, data: dict[str, Any], *, shared: bool = False) -> PromptStyle:
    """A new style of the user's own, or (staff only) a shared one."""
    if shared and not user.is_staff:
        raise StyleError("shared", "only staff publish shared styles", 403)
    fields = _clean(data, partial=False)
    owner = None if shared else user
    if owner is not None and PromptStyle.objects.own(user).count() >= MAX_STYLES_PER_USER:
        raise StyleError("name", f"you have {MAX_STYLES_PER_USER} styles, the limit")
    try:
        with transaction.atomic():
            return PromptStyle.objects.create(owner=owner, **fields)
    except IntegrityError:
        raise StyleError("name", f"a style named {fields['name']!r} exists", 409) from None


def editable_by(user: Any) -> Any:
    """The styles a user may change: their own; staff also the shared ones."""
    styles = PromptStyle.objects.own(user)
    if user.is_staff:
        styles = styles | PromptStyle.objects.filter(owner__isnull=True)
    return styles


def update_style(style: PromptStyle, data: dict[str, Any]) -> PromptStyle:
    for name, value in _clean(data, partial=True).items():
        setattr(style, name, value)
    try:
        with transaction.atomic():
            style.save()
    except IntegrityError:
        raise StyleError("name", f"a style named {style.name!r} exists", 409) from None
    return style


# --- A1111 styles.csv ------------------------------------------------------------------------


def export_csv(user: Any) -> str:
    """The user's own styles as A1111 writes styles.csv."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for style in PromptStyle.objects.own(user).order_by("name"):
        writer.writerow({k: getattr(style, k) for k in CSV_COLUMNS})
    return out.getvalue()


def import_csv(user: Any, text: str) -> int:
    """Add or replace the user's styles from an A1111 styles.csv; the number of rows read.
    All or nothing: one bad row refuses the file, naming its line."""
    if len(text.encode()) > MAX_CSV_BYTES:
        raise StyleError("file", f"the file is over {MAX_CSV_BYTES // 1024} KiB")
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    if not reader.fieldnames or "name" not in reader.fieldnames:
        raise StyleError("file", "not a styles.csv: the header needs name,prompt,negative_prompt")
    rows = []
    for row in reader:
        data = {k: row.get(k) or "" for k in CSV_COLUMNS}
        if not data["name"].strip():
            continue  # A1111 skips nameless rows
        try:
            rows.append(_clean(data, partial=False))
        except StyleError as exc:
            raise StyleError("file", f"line {reader.line_num}: {exc.message}") from None
    existing = PromptStyle.objects.own(user).count()
    names = {r["name"] for r in rows}
    replaced = PromptStyle.objects.own(user).filter(name__in=names).count()
    if existing - replaced + len(names) > MAX_STYLES_PER_USER:
        raise StyleError("file", f"that would make more than {MAX_STYLES_PER_USER} styles")
    with transaction.atomic():
        for row in rows:  # a later row of the same name wins, as A1111 reads the file
            PromptStyle.objects.update_or_create(
                owner=user,
                name=row["name"],
                defaults={"prompt": row["prompt"], "negative_prompt": row["negative_prompt"]},
            )
    return len(rows)
