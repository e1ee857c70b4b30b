"""Prompt editing `[from:to:when]` and alternation `[a|b]`: the schedule A1111 computes, the
conditioning switched at the right sampling step, and the demo engine running them."""

from __future__ import annotations

import base64
import io
from types import SimpleNamespace
from typing import Any

import pytest
from PIL import Image

from gpu_worker.prompt_syntax import PromptSyntaxError, check_prompt, prompt_schedule

from .conftest import demo_request


# A1111's own doctests for get_learned_conditioning_prompt_schedules (10 steps), where current
# scheduling reads them the same way.
@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        ("test", [(10, "test")]),
        ("a [b:3]", [(3, "a "), (10, "a b")]),
        ("a [b: 3]", [(3, "a "), (10, "a b")]),
        ("a [[[b]]:2]", [(2, "a "), (10, "a [[b]]")]),
        ("[(a:2):3]", [(3, ""), (10, "(a:2)")]),
        ("a [b : c : 1] d", [(1, "a b  d"), (10, "a  c  d")]),
        ("a[b:[c:d:2]:1]e", [(1, "abe"), (2, "ace"), (10, "ade")]),
        ("a [unbalanced", [(10, "a [unbalanced")]),
        ("a [b:.5] c", [(5, "a  c"), (10, "a b c")]),
        ("((a][:b:c [d:3]", [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
        ("[a|(b:1.1)]", [(s, "a" if s % 2 else "(b:1.1)") for s in range(1, 11)]),
    ],
)
def test_schedules_match_a1111(prompt: str, expected: list) -> None:
    assert prompt_schedule(prompt, 10) == expected


def test_when_is_a_step_number_or_with_a_point_a_fraction_capped_at_the_steps() -> None:
    assert prompt_schedule("[cat:dog:0]", 20) == [(20, "dog")]
    assert prompt_schedule("[cat:dog:99]", 20) == [(20, "cat")]
    assert prompt_schedule("[cat:dog:1]", 20) == [(1, "cat"), (20, "dog")]
    assert prompt_schedule("[cat:dog:1.0]", 20) == [(20, "cat")]
    assert prompt_schedule("[cat:dog:0.25]", 20) == [(5, "cat"), (20, "dog")]
    assert prompt_schedule("a [dog::5]", 20) == [(5, "a dog"), (20, "a ")]


def test_a_hires_pass_counts_edits_on_from_the_first_pass() -> None:
    # 20 first-pass steps then 10 hires steps: step 25 is the hires pass's 5th, 1.5 its middle
    assert prompt_schedule("[cat:dog:25]", 10, first_pass_steps=20) == [(5, "cat"), (10, "dog")]
    assert prompt_schedule("[cat:dog:1.5]", 10, first_pass_steps=20) == [(5, "cat"), (10, "dog")]
    assert prompt_schedule("[cat:dog:0.5]", 10, first_pass_steps=20) == [(10, "dog")]


def test_editing_nests_with_emphasis_alternation_and_break() -> None:
    schedule = prompt_schedule("([cat|dog]:1.3) BREAK [red:blue:2]", 3)
    assert schedule == [
        (1, "(cat:1.3) BREAK red"),
        (2, "(dog:1.3) BREAK red"),
        (3, "(cat:1.3) BREAK blue"),
    ]
    assert prompt_schedule("(x:[1.2|1.5])", 2) == [(1, "(x:1.2)"), (2, "(x:1.5)")]
    assert prompt_schedule("\\[a:b:1\\]", 5) == [(5, "\\[a:b:1\\]")]  # escaped: literal


@pytest.mark.parametrize(
    "prompt", ["[cat:dog:soon]", "[a:b:c:3]", "[cat|dog:3]", "[cat:]", "([a:b:1.2.3]:1.1)"]
)
def test_a_malformed_edit_is_refused(prompt: str) -> None:
    with pytest.raises(PromptSyntaxError):
        check_prompt(prompt)


def test_an_emphasis_weight_made_bad_by_alternation_is_refused() -> None:
    with pytest.raises(PromptSyntaxError):
        check_prompt("(cat:[1.2|1..2])")


# --- the conditioning per step --------------------------------------------------------------


def fake_encoder(torch: Any) -> Any:
    """Each text becomes a recognisable tensor: its length, then the negative's."""

    def encode(prompt: str, negative: str, chunks: int) -> dict[str, Any]:
        return {
            "prompt_embeds": torch.full((1, 77 * chunks, 4), float(len(prompt))),
            "negative_prompt_embeds": torch.full((1, 77 * chunks, 4), -float(len(negative))),
        }

    return encode


def switched_steps(torch: Any, prompt: str, negative: str, steps: int, order: int = 1) -> list:
    """The prompt text length the UNet sees at each sampler call, as the pipeline would."""
    from gpu_worker.conditioning_schedule import ScheduleSwitcher, build_schedule

    schedule = build_schedule(fake_encoder(torch), lambda t: 1, prompt, negative, steps)
    switcher = ScheduleSwitcher(schedule, images=2)
    first = schedule.at(0)
    embeds = torch.cat([first["negative_prompt_embeds"], first["prompt_embeds"]]).repeat(2, 1, 1)
    pipe = SimpleNamespace(scheduler=SimpleNamespace(order=order))
    seen = []
    calls = steps * order - (order - 1)
    for _ in range(calls):
        seen.append((int(embeds[-1, 0, 0]), int(embeds[0, 0, 0])))  # (positive, negative)
        assert embeds.shape == (4, 77, 4)
        embeds = switcher.after_step(pipe, {"prompt_embeds": embeds})["prompt_embeds"]
    return seen


def test_prompt_editing_switches_the_conditioning_after_its_step(torch: Any) -> None:
    # A1111: sampling step s (from 0) uses the first text whose end >= s, so "until step 2"
    # covers steps 0, 1 and 2
    seen = switched_steps(torch, "[cat:horse:2]", "", 6)
    assert [p for p, _ in seen] == [3, 3, 3, 5, 5, 5]


def test_alternation_switches_every_step_and_negatives_schedule_too(torch: Any) -> None:
    seen = switched_steps(torch, "[ab|cde]", "[x:yy:3]", 6)
    assert [p for p, _ in seen] == [2, 2, 3, 2, 3, 2]
    assert [n for _, n in seen] == [-1, -1, -1, -1, -2, -2]


def test_a_second_order_sampler_switches_by_step_not_by_model_call(torch: Any) -> None:
    seen = switched_steps(torch, "[cat:horse:1]", "", 3, order=2)
    assert [p for p, _ in seen] == [3, 3, 3, 5, 5]  # steps 0, 1, 1, 2, 2


def test_texts_of_different_lengths_share_one_shape(torch: Any) -> None:
    from gpu_worker.conditioning_schedule import build_schedule

    chunks = {"short": 1, "long " * 100: 2}
    schedule = build_schedule(
        fake_encoder(torch), lambda t: chunks.get(t, 1), "[short:" + "long " * 100 + ":1]", "", 4
    )
    assert {c["prompt_embeds"].shape[1] for c in schedule.conditionings} == {154}


# --- on the demo engine -----------------------------------------------------------------------


def unet_conditionings(engine: Any, **overrides: Any) -> tuple[list, Any]:
    """Run a request, recording the text conditioning of every UNet call."""
    pipe = engine.pipeline(engine.resolve("checkpoint", "atelier-demo-v1"), None)
    seen: list = []

    def record(module: Any, args: Any, kwargs: dict) -> None:
        seen.append(kwargs["encoder_hidden_states"].clone())

    handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        result = engine.run(demo_request(**overrides))
    finally:
        handle.remove()
    return seen, result


def pixels(result: Any) -> bytes:
    return Image.open(io.BytesIO(base64.b64decode(result.images[0]["png_b64"]))).tobytes()


def test_the_engine_switches_the_prompt_at_the_edit_step(engine: Any, torch: Any) -> None:
    common = {"sampler": "Euler", "steps": 4, "seed": 11}
    cats, cat = unet_conditionings(engine, prompt="a cat", **common)
    dogs, dog = unet_conditionings(engine, prompt="a dog", **common)
    edited, result = unet_conditionings(engine, prompt="a [cat:dog:2]", **common)
    assert len(edited) == 4
    assert [torch.equal(e, c) for e, c in zip(edited, cats, strict=True)] == [1, 1, 1, 0]
    assert torch.equal(edited[3], dogs[3])
    assert pixels(result) not in (pixels(cat), pixels(dog))
    assert "Prompt: " not in result.images[0]["infotext"]
    assert result.images[0]["infotext"].startswith("a [cat:dog:2]\n")


def test_an_edit_at_step_zero_or_past_the_end_is_the_plain_prompt(engine: Any) -> None:
    common = {"sampler": "Euler", "steps": 3, "seed": 5}
    dog = pixels(engine.run(demo_request(prompt="a dog", **common)))
    cat = pixels(engine.run(demo_request(prompt="a cat", **common)))
    assert pixels(engine.run(demo_request(prompt="a [cat:dog:0]", **common))) == dog
    assert pixels(engine.run(demo_request(prompt="a [cat:dog:99]", **common))) == cat


def test_alternation_runs_with_hires_fix_and_a_batch(engine: Any) -> None:
    hires = {
        "scale": 1.5,
        "resize_x": 0,
        "resize_y": 0,
        "upscaler": "Latent",
        "second_pass_steps": 2,
        "denoising_strength": 0.6,
    }
    result = engine.run(
        demo_request(prompt="a [cat|dog] [red:blue:0.5]", batch_size=2, hires=hires, steps=3)
    )
    assert [(i["width"], i["height"]) for i in result.images] == [(96, 96)] * 2


def test_sdxl_switches_both_the_embeddings_and_the_pooled_ones(xl_engine: Any, torch: Any) -> None:
    pipe = xl_engine.pipeline(xl_engine.resolve("checkpoint", "atelier-demo-xl"), None)
    seen: list = []

    def record(module: Any, args: Any, kwargs: dict) -> None:
        seen.append(kwargs["added_cond_kwargs"]["text_embeds"].clone())

    common = {"checkpoint": "atelier-demo-xl", "sampler": "Euler", "steps": 3, "seed": 2}
    handle = pipe.unet.register_forward_pre_hook(record, with_kwargs=True)
    try:
        edited = xl_engine.run(demo_request(prompt="a [cat:dog:1]", **common))
        cat = xl_engine.run(demo_request(prompt="a cat", **common))
        dog = xl_engine.run(demo_request(prompt="a dog", **common))
    finally:
        handle.remove()
    pooled_edit, pooled_cat, pooled_dog = seen[0:3], seen[3:6], seen[6:9]
    assert [torch.equal(e, c) for e, c in zip(pooled_edit, pooled_cat, strict=True)] == [1, 1, 0]
    assert torch.equal(pooled_edit[2], pooled_dog[2])
    assert pixels(edited) not in (pixels(cat), pixels(dog))
