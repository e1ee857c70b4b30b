"""A1111 prompt syntax, parsed. Torch-free (the encoding half lives in prompt_encoding.py): the
platform checks a prompt with `check_prompt` at submission, the engine runs the same parse.

- `(word)` x1.1, `((word))` x1.21, `[word]` /1.1, `(word:1.5)`, `\\(` a literal bracket,
  unbalanced brackets closed at the end (A1111's parse_prompt_attention, same results); a weight
  that is not a number (`(cat:1.2.3)`) is an error;
- `BREAK` starts a new 75-token chunk;
- `<lora:NAME:MULT>` / `<lora:NAME:TE:UNET>` (also `<lyco:...>`, in any case) extracted and
  removed from the text; a weight that is not a finite number is an error;
- an embedding is named by its name as a word (`embedding_pattern`);
- prompt editing `[from:to:when]`, `[to:when]`, `[from::when]` and alternation `[a|b|c]`
  (`prompt_schedule`): the prompt becomes a list of plain-syntax texts, each until a step, which
  the engine encodes once each and switches between as it samples. Unlike A1111 (which reads a
  malformed edit as literal text), an edit whose `when` is not a number, or a bracket mixing `:`
  and `|`, is an error, so a typo is caught at submission.
"""

from __future__ import annotations

import itertools
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
CHECK_STEPS = 150  # the schedule length check_prompt renders a prompt at


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


# --- prompt editing and alternation ----------------------------------------------------------

RE_SCHEDULE_TOKEN = re.compile(r"\\.|\\|[\[\]():|]|[^\\\[\]():|]+", re.S)
RE_WHEN = re.compile(r"\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*")
PAIRS = {"]": "[", ")": "("}


@dataclass(frozen=True)
class _Group:
    """Emphasis brackets, kept as text for parse_prompt_attention: `(…)`, `[…]`."""

    opening: str
    body: tuple[_Node, ...]
    closing: str


@dataclass(frozen=True)
class _Edit:
    """`[before:after:when]`; `when` as written (a '.' makes it a fraction of the steps)."""

    before: tuple[_Node, ...]
    after: tuple[_Node, ...]
    when: str


@dataclass(frozen=True)
class _Alternation:
    options: tuple[tuple[_Node, ...], ...]


_Node = str | _Group | _Edit | _Alternation


def _bracket_pairs(tokens: list[str]) -> dict[int, int]:
    """Opening token index -> its closing index. One stack for both kinds, so crossed brackets
    (`([)]`) pair only where they nest; the rest stay literal text, as in A1111."""
    stack: list[int] = []
    pairs: dict[int, int] = {}
    for i, token in enumerate(tokens):
        if token in ("[", "("):
            stack.append(i)
        elif token in PAIRS and stack and tokens[stack[-1]] == PAIRS[token]:
            pairs[stack.pop()] = i
    return pairs


def _parse_nodes(
    tokens: list[str], pairs: dict[int, int], start: int, end: int
) -> tuple[_Node, ...]:
    nodes: list[_Node] = []
    i = start
    while i < end:
        piece = tokens[i]
        close = pairs.get(i)
        if close is None:
            nodes.append(piece)
            i += 1
            continue
        if piece == "(":
            nodes.append(_Group("(", _parse_nodes(tokens, pairs, i + 1, close), ")"))
        else:
            nodes.append(_parse_square(tokens, pairs, i + 1, close))
        i = close + 1
    return tuple(nodes)


def _parse_square(tokens: list[str], pairs: dict[int, int], start: int, end: int) -> _Node:
    """The inside of `[…]`: emphasis, an edit or an alternation, by its top-level separators."""
    cuts: list[int] = []
    i = start
    while i < end:
        if i in pairs:
            i = pairs[i] + 1
            continue
        if tokens[i] in (":", "|"):
            cuts.append(i)
        i += 1
    if not cuts:
        return _Group("[", _parse_nodes(tokens, pairs, start, end), "]")
    separators = {tokens[c] for c in cuts}
    text = "".join(tokens[start:end])
    if len(separators) > 1:
        raise PromptSyntaxError(f"[{text}] mixes ':' (prompt editing) and '|' (alternation)")
    bounds = [start - 1, *cuts, end]
    parts = [_parse_nodes(tokens, pairs, a + 1, b) for a, b in itertools.pairwise(bounds)]
    if separators == {"|"}:
        return _Alternation(tuple(parts))
    if len(parts) > 3:
        raise PromptSyntaxError(f"[{text}]: prompt editing is [from:to:when], with two ':' at most")
    when = "".join(tokens[cuts[-1] + 1 : end])
    match = RE_WHEN.fullmatch(when)
    if not match:
        raise PromptSyntaxError(
            f"[{text}]: the step of a prompt edit must be a number (a step, or a fraction "
            f"like 0.5), not {when.strip()!r}"
        )
    before = parts[0] if len(parts) == 3 else ()
    return _Edit(before, parts[-2], match.group(1))


def _parse_schedule(prompt: str) -> tuple[_Node, ...]:
    tokens = RE_SCHEDULE_TOKEN.findall(prompt)
    return _parse_nodes(tokens, _bracket_pairs(tokens), 0, len(tokens))


def _visit(nodes: tuple[_Node, ...]) -> list[_Node]:
    found: list[_Node] = []
    for node in nodes:
        if isinstance(node, _Group):
            found += _visit(node.body)
        elif isinstance(node, _Edit):
            found += [node, *_visit(node.before), *_visit(node.after)]
        elif isinstance(node, _Alternation):
            found.append(node)
            for option in node.options:
                found += _visit(option)
    return found


def _end_step(when: str, steps: int, first_pass_steps: int | None) -> int:
    """A1111's current scheduling: '.' makes a fraction of the steps, else a step number; in a
    hires pass both count on from the first pass (1.5 is half-way through the hires steps)."""
    value = float(when)
    if "." in when:
        value = (value - (1.0 if first_pass_steps is not None else 0.0)) * steps
    else:
        value -= first_pass_steps or 0
    return min(steps, int(value))


def _render(nodes: tuple[_Node, ...], step: int, ends: dict[int, int]) -> str:
    out: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Group):
            out.append(node.opening + _render(node.body, step, ends) + node.closing)
        elif isinstance(node, _Edit):
            chosen = node.before if step <= ends[id(node)] else node.after
            out.append(_render(chosen, step, ends))
        else:
            out.append(_render(node.options[(step - 1) % len(node.options)], step, ends))
    return "".join(out)


def prompt_schedule(
    prompt: str, steps: int, *, first_pass_steps: int | None = None
) -> list[tuple[int, str]]:
    """The prompt as [(end_step, text)], A1111's get_learned_conditioning_prompt_schedules:
    sampling step s (counted from 0 in each pass) uses the first text whose end_step >= s.
    `first_pass_steps` is given for a hires pass, whose `steps` are its own.

    >>> prompt_schedule("a [cat:dog:5] photo", 20)
    [(5, 'a cat photo'), (20, 'a dog photo')]
    >>> prompt_schedule("[a|b]", 3)
    [(1, 'a'), (2, 'b'), (3, 'a')]
    """
    nodes = _parse_schedule(prompt)
    found = _visit(nodes)
    if not found:
        return [(steps, prompt)]
    ends: dict[int, int] = {}
    boundaries = {steps}
    for node in found:
        if isinstance(node, _Edit):
            ends[id(node)] = _end_step(node.when, steps, first_pass_steps)
            if ends[id(node)] >= 1:
                boundaries.add(ends[id(node)])
        else:
            boundaries.update(range(1, steps + 1))
    return [(step, _render(nodes, step, ends)) for step in sorted(boundaries)]


def text_at_step(schedule: list[tuple[int, str]], step: int) -> str:
    """The text sampling step `step` (from 0) uses; past the last end, the last text."""
    return next((text for end, text in schedule if step <= end), schedule[-1][1])


def strip_weights(prompt: str) -> str:
    """Plain text without emphasis syntax (for encoders that take text only)."""
    return "".join(t for t, w in parse_prompt_attention(prompt) if w != BREAK_WEIGHT)


def check_prompt(prompt: str) -> list[LoraTag]:
    """Parse a prompt as the engine will; its LoRA tags, or PromptSyntaxError saying what is
    wrong."""
    text, tags = extract_loras(prompt)
    # every text the schedule can produce (at the most steps a request may ask for) must parse
    for _, step_text in prompt_schedule(text, CHECK_STEPS):
        parse_prompt_attention(step_text)
    return tags


def embedding_pattern(names: list[str]) -> re.Pattern[str] | None:
    """Embedding names as whole words (A1111 triggers an embedding by its name in the text)."""
    if not names:
        return None
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    return re.compile(rf"(?<![\w-])(?:{alternatives})(?![\w-])", re.IGNORECASE)
