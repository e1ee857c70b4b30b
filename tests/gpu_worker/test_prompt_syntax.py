"""Prompt syntax against A1111's documented behaviour (its parse_prompt_attention doctests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpu_worker.prompt_syntax import (
    LoraTag,
    PromptSyntaxError,
    check_prompt,
    embedding_pattern,
    extract_loras,
    parse_prompt_attention,
    strip_weights,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
        ("((word))", [("word", 1.2100000000000002)]),
        ("[word]", [("word", 0.9090909090909091)]),
        ("(word:1.5)", [("word", 1.5)]),
        ("a BREAK b", [("a", 1.0), ("BREAK", -1.0), ("b", 1.0)]),
        ("", [("", 1.0)]),
    ],
)
def test_attention_parsing_matches_a1111(text: str, expected: list) -> None:
    assert parse_prompt_attention(text) == expected


def test_lora_tags_are_extracted_and_removed() -> None:
    text, tags = extract_loras("a fox <lora:foxStyle:0.8>, snow <lora:light:0.5:0.25>")
    assert text == "a fox , snow "
    assert tags == [LoraTag("foxStyle", 0.8, 0.8), LoraTag("light", 0.25, 0.5)]


def test_lora_without_weight_defaults_to_one_and_other_tags_vanish() -> None:
    text, tags = extract_loras("x <lora:a> <hypernet:h:1>")
    assert tags == [LoraTag("a", 1.0, 1.0)] and "<" not in text


def test_bad_lora_weight_is_an_error() -> None:
    with pytest.raises(PromptSyntaxError):
        extract_loras("<lora:a:strong>")


def test_strip_weights() -> None:
    assert strip_weights("a (red:1.3) [car] BREAK road") == "a red carroad"


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    from transformers import CLIPTokenizer

    from gpu_worker.clip_vocab import write_tokenizer_folder

    return CLIPTokenizer.from_pretrained(
        write_tokenizer_folder(Path(tmp_path_factory.mktemp("tok")))
    )


def test_chunks_of_75_tokens(tokenizer) -> None:  # noqa: ANN001
    from gpu_worker.prompt_encoding import tokenize_prompt

    short = tokenize_prompt(tokenizer, "a photo of a cat")
    assert len(short) == 1 and short[0].tokens[:5] == [320, 1125, 539, 320, 2368]
    assert len(short[0].tokens) == 75 and short[0].tokens[5:] == [49407] * 70
    long = tokenize_prompt(tokenizer, " ".join(["cat"] * 100))
    assert len(long) == 2 and all(len(c.tokens) == 75 for c in long)


def test_break_starts_a_new_chunk_and_weights_follow_tokens(tokenizer) -> None:  # noqa: ANN001
    from gpu_worker.prompt_encoding import tokenize_prompt

    chunks = tokenize_prompt(tokenizer, "a (cat:1.5) BREAK dog")
    assert len(chunks) == 2
    assert chunks[0].multipliers[:2] == [1.0, 1.5]
    assert chunks[1].tokens[0] == tokenizer.convert_tokens_to_ids("dog</w>")


def test_long_prompt_breaks_at_a_recent_comma(tokenizer) -> None:  # noqa: ANN001
    from gpu_worker.prompt_encoding import tokenize_prompt

    chunks = tokenize_prompt(tokenizer, " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10))
    comma = tokenizer.convert_tokens_to_ids(",</w>")
    first = [t for t in chunks[0].tokens if t != 49407]
    assert first[-1] == comma and len(first) == 71


def test_embeddings_take_their_vectors_places_and_never_straddle_chunks(tokenizer) -> None:  # noqa: ANN001
    import torch

    from gpu_worker.prompt_encoding import Embedding, tokenize_prompt

    style = Embedding("fooStyle", (torch.zeros(3, 32),))
    chunks = tokenize_prompt(tokenizer, "a (fooStyle:1.2) cat", {"fooStyle": style})
    assert chunks[0].fixes == [(1, "fooStyle")]
    assert chunks[0].length == 1 + 3 + 1
    assert chunks[0].multipliers[1:4] == [1.2, 1.2, 1.2]
    assert tokenize_prompt(tokenizer, "a foostyle-like cat", {"fooStyle": style})[0].fixes == []
    crowded = tokenize_prompt(tokenizer, " ".join(["cat"] * 74) + " fooStyle", {"fooStyle": style})
    assert len(crowded) == 2 and crowded[1].fixes == [(0, "fooStyle")]


@pytest.mark.parametrize("tag", ["<LORA:a:0.5>", "<lyco:a:0.5>", "<Lora:a:0.5>", "<LyCO:a:0.5>"])
def test_lora_and_lyco_tags_are_read_in_any_case(tag: str) -> None:
    assert check_prompt(f"x {tag}") == [LoraTag("a", 0.5, 0.5)]


@pytest.mark.parametrize(
    "prompt",
    ["<lora:a:abc>", "<lora:a:1:x>", "<lora:a:inf>", "<lyco:a:nan>", "(cat:1.2.3)", "(a:.)"],
)
def test_a_weight_that_is_not_a_number_is_refused(prompt: str) -> None:
    with pytest.raises(PromptSyntaxError):
        check_prompt(prompt)


def test_embeddings_are_named_as_whole_words_in_any_case() -> None:
    pattern = embedding_pattern(["easyneg", "easy"])
    assert pattern is not None
    assert [m.group(0) for m in pattern.finditer("EasyNeg, easy-going, easy")] == [
        "EasyNeg",
        "easy",
    ]
