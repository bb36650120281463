"""Tokenization: a huge text is cut before tokenizing, always with the ids of the whole text."""

from __future__ import annotations

import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from distilintent.core.tokenization import CHARS_PER_TOKEN, TextEncoder
from distilintent.training.model import minilm_path

WORDS = st.sampled_from(["book", "a", "flight", "to", "Zürich", "naïve", "résumé", "東京", "🙂", "x" * 150, "!!!",
                         "internationalization", "ÉCOLE", "e\u0301", "tab\tbed", "new\nline", "", "  "])
SEPARATORS = st.sampled_from([" ", "  ", "\t", "\n", "", ", ", "-", "\u3000", "\u00a0"])


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder.from_file(str(minilm_path() / "tokenizer.json"), max_length=8)


def whole(encoder: TextEncoder, text: str) -> list[int]:
    return encoder.tokenizer.encode(text).ids


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(WORDS, SEPARATORS), min_size=0, max_size=400))
@example([("x" * 150, "")] * 3)  # one huge word: no whitespace to cut at
@example([("", " ")] * 200 + [("book", " ")] * 20)  # leading whitespace: the prefix has too few tokens
@example([("book", " " * 200)] + [("flight", " ")] * 20)  # a few tokens, then whitespace past the cut
@example([("book", " ")] * 7 + [("internationalization", "")] * 9)  # the boundary word is kept
def test_a_cut_text_has_the_ids_of_the_whole_text(encoder: TextEncoder, parts: list[tuple[str, str]]) -> None:
    text = "".join(word + separator for word, separator in parts)
    assert encoder.token_ids([text]) == [whole(encoder, text)]


def test_a_huge_text_is_tokenized_from_its_start_only() -> None:
    encoder = TextEncoder.from_file(str(minilm_path() / "tokenizer.json"), max_length=64)
    text = "book a flight to paris " * 200_000  # 4.6 MB
    assert len(encoder._bounded(text)) == 64 * CHARS_PER_TOKEN
    started = time.perf_counter()
    ids = encoder.token_ids([text])
    assert time.perf_counter() - started < 0.05  # the whole text takes seconds
    assert ids == [whole(encoder, text[:10_000])] and len(ids[0]) == 64
