"""A1111 prompt syntax, parsed. Torch-free (the encoding half lives in prompt_encoding.py): the
platform checks a prompt with `check_prompt` at submission, the engine runs the same parse.

- `(word)` x1.1, `((word))` x1.21, `[word]` /1.1, `(word:1.5)`, `\\(` a literal bracket,
  unbalanced brackets closed at the end (A1111's parse_prompt_attention, same results); a weight
  that is not a number (`(cat:1.2.3)`) is an error;
- `BREAK` starts a new 75-token chunk;
- `<lora:NAME:MULT>` / `<lora:NAME:TE:UNET>` (also `<lyco:...>`, in any case) extracted and
  removed from the text; a weight that is not a finite number is an error;
- an embedding is named by its name as a word (`embedding_pattern`).

Not supported: prompt editing `[from:to:when]` and alternation `[a|b]` are read as plain
de-emphasised text.
"""

from __future__ import annotations

import math
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
LORA_KINDS = frozenset({"lora", "lyco"})  # compared in lower case
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
            multiply_range(round_brackets.pop(), _emphasis_weight(weight))
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


def _emphasis_weight(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise PromptSyntaxError(f"the emphasis weight {text!r} is not a number") from None


def _lora_weight(text: str, tag: str, default: float) -> float:
    if not text.strip():
        return default
    try:
        weight = float(text)
    except ValueError:
        weight = math.nan
    if not math.isfinite(weight):
        raise PromptSyntaxError(f"the LoRA weight in {tag!r} is not a number")
    return weight


def extract_loras(prompt: str) -> tuple[str, list[LoraTag]]:
    """Remove `<lora:...>` (and `<lyco:...>`) tags; return the cleaned text and the tags.

    Several tags for one name add up. Other extra-network tags (`<hypernet:...>`) are removed
    too, since this engine cannot apply them.
    """
    tags: dict[str, LoraTag] = {}

    def take(match: re.Match[str]) -> str:
        kind, args, tag = match.group(1), match.group(2).split(":"), match.group(0)
        if kind.lower() not in LORA_KINDS:
            return ""
        name = args[0].strip()
        if not name:
            raise PromptSyntaxError(f"empty LoRA name in {tag!r}")
        te = _lora_weight(args[1], tag, 1.0) if len(args) > 1 else 1.0
        unet = _lora_weight(args[2], tag, te) if len(args) > 2 else te
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


def check_prompt(prompt: str) -> list[LoraTag]:
    """Parse a prompt as the engine will; its LoRA tags, or PromptSyntaxError saying what is
    wrong."""
    text, tags = extract_loras(prompt)
    parse_prompt_attention(text)
    return tags


def embedding_pattern(names: list[str]) -> re.Pattern[str] | None:
    """Embedding names as whole words (A1111 triggers an embedding by its name in the text)."""
    if not names:
        return None
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE)
