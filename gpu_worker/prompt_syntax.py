"""A1111 prompt syntax, parsed. Torch-free (the encoding half lives in prompt_encoding.py).

- `(word)` x1.1, `((word))` x1.21, `[word]` /1.1, `(word:1.5)`, `\\(` a literal bracket,
  unbalanced brackets closed at the end (A1111's parse_prompt_attention, same results);
- `BREAK` starts a new 75-token chunk;
- `<lora:NAME:MULT>` / `<lora:NAME:TE:UNET>` extracted and removed from the text.

Not supported: prompt editing `[from:to:when]` and alternation `[a|b]` are read as plain
de-emphasised text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RE_ATTENTION = re.compile(
    r"""
\\\(|\\\)|\\\[|\\]|\\\\|\\|\(|\[|:\s*([+-]?[.\d]+)\s*\)|\)|]|[^\\()\[\]:]+|:
""",
    re.X,
)
RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
BREAK_WEIGHT = -1.0


@dataclass(frozen=True)
class LoraTag:
    name: str
    unet_weight: float
    text_encoder_weight: float


class PromptSyntaxError(ValueError):
    pass


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split text into (fragment, weight); ("BREAK", -1) marks a chunk break.

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    res: list[list] = []
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for p in range(start, len(res)):
            res[p][1] *= multiplier

    for m in RE_ATTENTION.finditer(text):
        piece = m.group(0)
        weight = m.group(1)
        if piece.startswith("\\"):
            res.append([piece[1:], 1.0])
        elif piece == "(":
            round_brackets.append(len(res))
        elif piece == "[":
            square_brackets.append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), float(weight))
        elif piece == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_MULTIPLIER)
        elif piece == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(RE_BREAK.split(piece)):
                if i > 0:
                    res.append(["BREAK", BREAK_WEIGHT])
                res.append([part, 1.0])
    for pos in round_brackets:
        multiply_range(pos, ROUND_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, SQUARE_MULTIPLIER)
    if not res:
        res = [["", 1.0]]
    i = 0  # merge neighbours of equal weight, as A1111 does
    while i + 1 < len(res):
        if res[i][1] == res[i + 1][1]:
            res[i][0] += res[i + 1][0]
            res.pop(i + 1)
        else:
            i += 1
    return [(str(t), float(w)) for t, w in res]


def extract_loras(prompt: str) -> tuple[str, list[LoraTag]]:
    """Remove `<lora:...>` (and `<lyco:...>`) tags; return the cleaned text and the tags.

    Several tags for one name add up. Other extra-network tags (`<hypernet:...>`) are removed
    too, since this engine cannot apply them.
    """
    tags: dict[str, LoraTag] = {}

    def take(match: re.Match[str]) -> str:
        kind, args = match.group(1), match.group(2).split(":")
        if kind not in {"lora", "lyco"}:
            return ""
        name = args[0].strip()
        if not name:
            raise PromptSyntaxError(f"empty LoRA name in {match.group(0)!r}")
        try:
            te = float(args[1]) if len(args) > 1 and args[1].strip() else 1.0
            unet = float(args[2]) if len(args) > 2 and args[2].strip() else te
        except ValueError as exc:
            raise PromptSyntaxError(f"bad LoRA weight in {match.group(0)!r}") from exc
        previous = tags.get(name)
        if previous:
            unet += previous.unet_weight
            te += previous.text_encoder_weight
        tags[name] = LoraTag(name=name, unet_weight=unet, text_encoder_weight=te)
        return ""

    cleaned = RE_EXTRA_NETWORK.sub(take, prompt)
    return cleaned, list(tags.values())


def strip_weights(prompt: str) -> str:
    """Plain text without emphasis syntax (for encoders that take text only)."""
    return "".join(t for t, w in parse_prompt_attention(prompt) if w != BREAK_WEIGHT)
