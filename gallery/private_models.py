"""Published images made with members' private models: nobody but the author learns their names.

A gallery viewer other than the author sees a private model as "private": no name, no hash.
That holds for every place a name could travel: the infotext on the image page, the prompt
(`<lora:name:0.8>` becomes `<lora:private:0.8>`, a private embedding's word becomes
`private`), a ControlNet unit's model (`Model: private`, its hash gone), the PNG's `parameters`
chunk of the file served to others (and so A1111's PNG Info and community sites), the remix
link, and the text the gallery's search reads.

What is shown is decided by an allowlist, not a blocklist: a name is kept only if it is public
now (a platform model, or a member's model staff published). So a model renamed or deleted
after the image was made, whose old name no current entry carries, stays hidden too.
"""

from __future__ import annotations

import io
import re
import struct
import zlib
from dataclasses import dataclass

from generation.models import CatalogEntry, Job
from gpu_worker.infotext import (
    PNG_CHUNK,
    RE_CONTROLNET_KEY,
    RE_PARAM,
    parse_controlnet_unit,
    quote,
    unquote,
)
from gpu_worker.prompt_syntax import LORA_KINDS, RE_EXTRA_NETWORK

PLACEHOLDER = "private"
HASH_LISTS = {"Lora hashes": CatalogEntry.Kind.LORA, "TI hashes": CatalogEntry.Kind.EMBEDDING}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# a ControlNet unit's model as the extension writes it: "name [hash]" (the hash optional)
RE_MODEL_TITLE = re.compile(r"^(.*?)(?:\s*\[([0-9a-fA-F]+)\])?$")
RE_UNIT_MODEL = re.compile(r"(^|,\s*)(Model:\s*)([^,]*)")


@dataclass(frozen=True)
class Shown:
    """The model names one job's image may show to others."""

    checkpoint: bool  # the job's checkpoint is public
    public: frozenset[tuple[str, str]]  # (kind, name) of the names it uses that are public
    hidden_words: frozenset[str]  # private embeddings' names, as prompt words
    public_hashes: frozenset[tuple[str, str, str]] = frozenset()  # (kind, name, sha256)

    def allows(self, kind: str, name: str) -> bool:
        return (kind, name) in self.public

    def allows_hash(self, kind: str, name: str, digest: str) -> bool:
        """A hash list entry is shown only if it is the public model's own file (an author's
        private file under a public model's name keeps its hash to itself)."""
        digest = digest.lower()
        return bool(digest) and any(
            (k, n) == (kind, name) and sha.startswith(digest) for k, n, sha in self.public_hashes
        )


def _hash_list(value: str) -> list[tuple[str, str]]:
    """`name: hash, name: hash` (A1111's Lora hashes / TI hashes) as pairs."""
    pairs = []
    for item in unquote(value).split(","):
        name, _sep, digest = item.strip().rpartition(":")
        if name:
            pairs.append((name.strip(), digest.strip()))
    return pairs


def split_infotext(infotext: str) -> tuple[str, list[tuple[str, str]]]:
    """The text (prompt and negative prompt lines) and the parameter line's (key, raw value)
    pairs in order, as `gpu_worker.infotext.parse_infotext` tells them apart."""
    head, _sep, last = infotext.strip().rpartition("\n")
    pairs = [(m.group(1), m.group(2)) for m in RE_PARAM.finditer(last)]
    if len(pairs) < 3:
        return infotext.strip(), []
    return head, pairs


def _model_title(unit_text: str) -> tuple[str, str]:
    """(name, hash) of a ControlNet unit's model ("name [hash]"; the hash may be missing)."""
    title = parse_controlnet_unit(unit_text).get("model", "")
    match = RE_MODEL_TITLE.match(title.strip())
    return (match.group(1).strip(), match.group(2) or "") if match else ("", "")


def _redact_unit(unit_text: str, shown: Shown) -> str:
    """A ControlNet unit's text with a private model's name and hash replaced by `private`."""
    name, digest = _model_title(unit_text)
    public = (
        shown.allows_hash("controlnet", name, digest)
        if digest
        else shown.allows("controlnet", name)
    )
    if public:
        return unit_text
    return RE_UNIT_MODEL.sub(lambda m: f"{m.group(1)}{m.group(2)}{PLACEHOLDER}", unit_text)


def names_in(job: Job, infotext: str) -> set[tuple[str, str]]:
    """Every (kind, name) of a model the job's image names, in its text or parameters."""
    text, pairs = split_infotext(infotext)
    params = dict(pairs)
    names = {
        ("lora", m.group(2).split(":")[0].strip())
        for m in RE_EXTRA_NETWORK.finditer(f"{text}\n{job.params.get('prompt', '')}")
        if m.group(1).lower() in LORA_KINDS
    }
    names |= {("lora", n) for n in job.params.get("loras") or []}
    for key, kind in HASH_LISTS.items():
        names |= {(kind, name) for name, _digest in _hash_list(params.get(key, ""))}
    names |= {("controlnet", unit.get("model", "")) for unit in job.params.get("controlnet") or ()}
    for key, raw in pairs:
        if RE_CONTROLNET_KEY.match(key):
            names.add(("controlnet", _model_title(unquote(raw))[0]))
    if params.get("VAE") or job.params.get("vae"):
        names.add(("vae", unquote(params.get("VAE") or job.params.get("vae") or "")))
    return names


def shown_for(job: Job, infotext: str = "") -> Shown:
    """What of `job`'s models others may see named (two queries)."""
    wanted = names_in(job, infotext or "")
    public_rows = CatalogEntry.objects.public().filter(name__in={name for _kind, name in wanted})
    rows = [row for row in public_rows.values_list("kind", "name", "sha256") if row[:2] in wanted]
    public = frozenset(row[:2] for row in rows)
    # Embeddings are plain words in a prompt: hide those the infotext lists as private and,
    # for images without TI hashes, the author's own unpublished embeddings.
    own = CatalogEntry.objects.filter(
        owner_id=job.owner_id, kind=CatalogEntry.Kind.EMBEDDING, published=False
    ).values_list("name", flat=True)
    listed = {name for kind, name in wanted if kind == CatalogEntry.Kind.EMBEDDING}
    hidden = {n for n in {*listed, *own} if (CatalogEntry.Kind.EMBEDDING, n) not in public}
    return Shown(job.checkpoint.is_public, public, frozenset(hidden), frozenset(rows))


def redact_text(text: str, shown: Shown, *, drop: bool = False) -> str:
    """A prompt without private names: their LoRA tags and embedding words say `private`, or
    go (`drop`, for a remix link, which must not ask for a model its viewer cannot use)."""

    def tag(match: re.Match[str]) -> str:
        kind, args = match.group(1), match.group(2).split(":")
        if kind.lower() not in LORA_KINDS or shown.allows("lora", args[0].strip()):
            return match.group(0)
        return "" if drop else f"<{kind}:{':'.join([PLACEHOLDER, *args[1:]])}>"

    text = RE_EXTRA_NETWORK.sub(tag, text)
    for word in sorted(shown.hidden_words, key=len, reverse=True):
        pattern = rf"(?<!\w){re.escape(word)}(?!\w)"
        text = re.sub(pattern, "" if drop else PLACEHOLDER, text, flags=re.IGNORECASE)
    return text


def redact_infotext(infotext: str, shown: Shown) -> str:
    """The infotext others see: private names gone from the text and the parameters (Model and
    Model hash of a private checkpoint, a private VAE, private LoRA and TI hash entries, a
    private ControlNet unit's model)."""
    if not infotext:
        return infotext
    text, pairs = split_infotext(infotext)
    vae = unquote(dict(pairs).get("VAE", ""))
    kept: list[str] = []
    for key, raw in pairs:
        if key in ("Model", "Model hash") and not shown.checkpoint:
            continue
        if key in ("VAE", "VAE hash") and not shown.allows("vae", vae):
            continue
        if key in HASH_LISTS:
            entries = [
                f"{name}: {digest}"
                for name, digest in _hash_list(raw)
                if shown.allows_hash(HASH_LISTS[key], name, digest)
            ]
            if not entries:
                continue
            raw = quote(", ".join(entries))
        if RE_CONTROLNET_KEY.match(key):
            raw = quote(_redact_unit(unquote(raw), shown))
        kept.append(f"{key}: {raw.strip()}")
    text = redact_text(text, shown)
    return f"{text}\n{', '.join(kept)}" if kept else text


def png_with_parameters(data: bytes, infotext: str) -> bytes:
    """The same PNG with its `parameters` text chunk replaced (pixels untouched, no re-encode):
    other chunks stay as they are, byte for byte."""
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError("not a PNG")
    out = io.BytesIO()
    out.write(PNG_SIGNATURE)
    position, written = len(PNG_SIGNATURE), False
    while position + 8 <= len(data):
        (length,) = struct.unpack(">I", data[position : position + 4])
        kind = data[position + 4 : position + 8]
        end = position + 12 + length
        body = data[position + 8 : position + 8 + length]
        keyword = body.split(b"\0", 1)[0]
        ours = kind in (b"tEXt", b"iTXt", b"zTXt") and keyword == PNG_CHUNK.encode()
        if (ours or kind == b"IEND") and not written:  # ours goes where the old one was
            out.write(_text_chunk(infotext))
            written = True
        if not ours:
            out.write(data[position:end])
        position = end
    return out.getvalue()


def _text_chunk(infotext: str) -> bytes:
    """An iTXt chunk (UTF-8, uncompressed): what PIL writes for non-Latin-1 text."""
    body = PNG_CHUNK.encode() + b"\0\0\0\0\0" + infotext.encode("utf-8")
    crc = zlib.crc32(b"iTXt" + body) & 0xFFFFFFFF
    return struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", crc)
