"""Text → token ids with the Hugging Face ``tokenizers`` library (shared by training and serving)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from tokenizers import Tokenizer

from distilintent.core.bundle import TOKENIZER_FILE

CHARS_PER_TOKEN = 16  # the prefix of a huge text tokenized first (see TextEncoder._bounded)


def valid_unicode(text: str) -> str:
    """``text`` with every lone surrogate (not valid Unicode, e.g. from ``surrogateescape``) replaced by U+FFFD.

    A surrogate pair written as two code points becomes the character it encodes. Other text is returned as is.
    """
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class TextEncoder:
    """Tokenizes texts into ``input_ids``/``attention_mask`` int64 arrays, truncated to ``max_length``.

    Padding is done here, not by the tokenizer (:func:`pad_into`), to the longest text of the batch.
    Texts longer than ``max_length`` tokens are truncated (the end is cut).
    """

    def __init__(self, tokenizer: Tokenizer, max_length: int, pad_token_id: int | None = None) -> None:
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2, got {max_length}")
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length)
        self.tokenizer = tokenizer
        self.max_length = max_length
        if pad_token_id is None:
            pad_token_id = tokenizer.token_to_id("[PAD]")
        self.pad_token_id = int(pad_token_id or 0)
        # ids only: the fast batch call skips the offsets and other Encoding fields (tokenizers >= 0.20)
        self._encode_batch = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)

    @classmethod
    def from_str(cls, json_text: str, max_length: int, pad_token_id: int | None = None) -> TextEncoder:
        return cls(Tokenizer.from_str(json_text), max_length, pad_token_id)

    @classmethod
    def from_bundle(cls, bundle: Any) -> TextEncoder:
        """The tokenizer a bundle was trained with, at its ``max_length`` and pad id (checksum checked)."""
        pad_id = (bundle.manifest.get("tokenizer") or {}).get("pad_token_id")
        return cls.from_str(bundle.read_bytes(TOKENIZER_FILE).decode("utf-8"), bundle.max_length, pad_id)

    @classmethod
    def from_file(cls, path: str, max_length: int, pad_token_id: int | None = None) -> TextEncoder:
        return cls(Tokenizer.from_file(str(path)), max_length, pad_token_id)

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, truncated to ``max_length`` (a huge text is cut before tokenizing, with the
        same result: see :meth:`_bounded`)."""
        chosen = [self._bounded(valid_unicode(text)) for text in texts]
        return [encoding.ids for encoding in self._encode_batch(chosen)]

    def _bounded(self, text: str) -> str:
        """``text``, or a prefix of it that tokenizes to the same truncated ids.

        A prefix of ``max_length × CHARS_PER_TOKEN`` characters is used when its tokens fill ``max_length`` and
        the last kept one ends before the prefix's last whitespace, so that no kept word is cut (BERT's
        normalisation and word pieces depend only on the word itself); otherwise the whole text is tokenized.
        """
        limit = self.max_length * CHARS_PER_TOKEN
        if len(text) <= limit:
            return text
        prefix = text[:limit]
        encoding = self.tokenizer.encode(prefix)
        kept_end = max((end for (_, end), special in zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
                        if not special), default=limit)
        boundary = max(prefix.rfind(space) for space in (" ", "\t", "\n", "\r"))
        if len(encoding.ids) >= self.max_length and 0 <= kept_end <= boundary:
            return prefix
        return text

    def pad(self, ids: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """``input_ids`` and ``attention_mask`` ``(batch, longest)`` int64 arrays."""
        width = max(max((len(row) for row in ids), default=1), 1)
        input_ids = np.empty((len(ids), width), dtype=np.int64)
        attention_mask = np.empty((len(ids), width), dtype=np.int64)
        pad_into(ids, input_ids, attention_mask, self.pad_token_id)
        return input_ids, attention_mask

    def encode(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        return self.pad(self.token_ids(texts))


def pad_into(ids: Sequence[Sequence[int]], input_ids: np.ndarray, attention_mask: np.ndarray, pad_id: int) -> None:
    """Write token ids into preallocated ``(batch, width)`` buffers, padding with ``pad_id``."""
    input_ids.fill(pad_id)
    attention_mask.fill(0)
    for row, tokens in enumerate(ids):
        input_ids[row, : len(tokens)] = tokens
        attention_mask[row, : len(tokens)] = 1
