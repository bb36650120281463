"""Texts of an exact token length for ``distilintent bench --seq-lens``, made from real queries.

A length counts the tokens the model sees, ``[CLS]`` and ``[SEP]`` included (what the runtimes pad
and compute over). Real queries are joined (repeating them as needed) and cut at a token boundary;
each candidate is re-tokenized and kept only if it has exactly that many tokens.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def exact_length_texts(tokenizer_json: str, sources: Sequence[str], length: int, count: int,
                       seed: int = 0) -> list[str]:
    """Up to ``count`` distinct texts of exactly ``length`` tokens under the bundle's tokenizer."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(tokenizer_json)
    tokenizer.no_padding()
    tokenizer.no_truncation()
    specials = len(tokenizer.encode("").ids)
    content = length - specials
    if content < 1:
        raise ValueError(f"sequence length {length} leaves no room for text: the tokenizer adds {specials} "
                         f"special tokens, so use at least {specials + 1}")
    queries = [text.strip() for text in sources if text.strip()]
    if not queries:
        raise ValueError("no source texts to build sequence-length texts from")
    order = list(range(len(queries)))
    random.Random(seed).shuffle(order)
    found: list[str] = []
    seen: set[str] = set()
    for attempt in range(max(count, 1) * 20):
        start = order[attempt % len(order)]
        parts: list[str] = []
        while True:  # join queries (wrapping around) until there are enough tokens
            parts.append(queries[(start + len(parts)) % len(queries)])
            joined = " ".join(parts)
            encoding = tokenizer.encode(joined)
            if len(encoding.ids) - specials >= content:
                break
        offsets = [offset for offset, special in zip(encoding.offsets, encoding.special_tokens_mask, strict=True)
                   if not special]
        candidate = joined[: offsets[content - 1][1]]
        if candidate not in seen and len(tokenizer.encode(candidate).ids) == length:
            seen.add(candidate)
            found.append(candidate)
            if len(found) == count:
                break
    if not found:
        raise ValueError(f"could not build any text of exactly {length} tokens from the source texts")
    return found
