"""Prompt editing and alternation at sampling time: the conditioning switched per step.

prompt_syntax.prompt_schedule turns a prompt into texts, each until a step; here each distinct
(prompt, negative prompt) pair of a pass is encoded once, every text padded to the same number
of chunks, and the pipeline's step callback swaps the conditioning in at its step, as A1111's
reconstruct_cond_batch does (sampling step s, from 0 in each pass, uses the first text whose
end step is >= s).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gpu_worker.prompt_syntax import prompt_schedule, text_at_step

# encode(prompt, negative, min_chunks) -> the pipeline's embedding keyword arguments
Encoder = Callable[[str, str, int], dict[str, torch.Tensor]]


@dataclass
class ConditioningSchedule:
    ends: list[int]  # sampling step (from 0) up to which each entry holds
    conditionings: list[dict[str, torch.Tensor]]
    texts: list[tuple[str, str]]  # (prompt, negative) of each entry, for tests and logs

    @property
    def changes(self) -> bool:
        return len({id(c) for c in self.conditionings}) > 1

    def index_at(self, step: int) -> int:
        return next((i for i, end in enumerate(self.ends) if step <= end), len(self.ends) - 1)

    def at(self, step: int) -> dict[str, torch.Tensor]:
        return self.conditionings[self.index_at(step)]


def build_schedule(
    encode: Encoder,
    count_chunks: Callable[[str], int],
    prompt: str,
    negative: str,
    steps: int,
    *,
    first_pass_steps: int | None = None,
) -> ConditioningSchedule:
    """Both prompts' schedules merged on their step boundaries, each distinct pair encoded once."""
    positive = prompt_schedule(prompt, steps, first_pass_steps=first_pass_steps)
    negatives = prompt_schedule(negative, steps, first_pass_steps=first_pass_steps)
    ends = sorted({end for end, _ in positive} | {end for end, _ in negatives})
    texts = [(text_at_step(positive, end), text_at_step(negatives, end)) for end in ends]
    chunks = max(count_chunks(t) for pair in set(texts) for t in pair)
    encoded: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for pair in texts:
        if pair not in encoded:
            encoded[pair] = encode(pair[0], pair[1], chunks)
    # neighbouring entries with the same texts share one conditioning (nothing to switch)
    return ConditioningSchedule(ends, [encoded[pair] for pair in texts], texts)


class ScheduleSwitcher:
    """Called from the step callback of one pipeline call: puts the next step's conditioning
    into the callback's tensors when it differs from the one in use."""

    def __init__(self, schedule: ConditioningSchedule, images: int) -> None:
        self.schedule, self.images = schedule, images
        self.calls = 0
        self.current = schedule.index_at(0)

    @property
    def tensor_inputs(self) -> list[str]:
        """What the callback must be given (and may return) for the switch."""
        if not self.schedule.changes:
            return []
        return ["prompt_embeds", *(["add_text_embeds"] if self._pooled else [])]

    @property
    def _pooled(self) -> bool:
        return "pooled_prompt_embeds" in self.schedule.conditionings[0]

    def after_step(self, pipe: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if not self.schedule.changes:
            return kwargs
        # a second-order sampler calls back twice per step (diffusers' Heun: 2N-1 calls)
        order = int(getattr(pipe.scheduler, "order", 1))
        index = self.schedule.index_at((self.calls + order - 1) // order)
        if index == self.current:
            return kwargs
        self.current = index
        cond = self.schedule.conditionings[index]
        current = kwargs["prompt_embeds"]
        guided = current.shape[0] == 2 * self.images  # classifier-free guidance doubles it
        kwargs["prompt_embeds"] = _stacked(
            cond["prompt_embeds"], cond["negative_prompt_embeds"], self.images, guided
        ).to(current)
        if self._pooled and "add_text_embeds" in kwargs:
            kwargs["add_text_embeds"] = _stacked(
                cond["pooled_prompt_embeds"],
                cond["negative_pooled_prompt_embeds"],
                self.images,
                guided,
            ).to(kwargs["add_text_embeds"])
        return kwargs


def _stacked(
    positive: torch.Tensor, negative: torch.Tensor, images: int, guided: bool
) -> torch.Tensor:
    """The layout diffusers builds: each prompt repeated per image, negatives first."""
    repeat = (images,) + (1,) * (positive.ndim - 1)
    pos = positive.repeat(*repeat)
    return torch.cat([negative.repeat(*repeat), pos]) if guided else pos
