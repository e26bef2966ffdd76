"""Words to token positions.

A prompt is split on whitespace; each word is tokenized alone (CLIP's BPE never merges across
spaces) and positions are counted from 1, after the start-of-text token. A word matches when it
equals the prompt word ignoring case and surrounding punctuation.
"""

from __future__ import annotations

import string

from ..errors import PromptError


def _norm(word: str) -> str:
    return word.strip(string.punctuation).lower()


def word_tokens(tokenizer, prompt: str) -> list[tuple[str, list[int]]]:
    """[(word, [token positions])] for every whitespace-separated word of ``prompt``."""
    out, pos = [], 1
    for word in prompt.split():
        n = len(tokenizer(word, add_special_tokens=False).input_ids)
        out.append((word, list(range(pos, pos + n))))
        pos += n
    return out


def token_positions(tokenizer, prompt: str, word: str) -> list[int]:
    """Token positions of every occurrence of ``word`` (one or more words) in ``prompt``.

    Raises :class:`PromptError` naming the prompt when the word is absent.
    """
    parts = [_norm(w) for w in word.split()]
    words = word_tokens(tokenizer, prompt)
    found: list[int] = []
    for i in range(len(words) - len(parts) + 1):
        if [_norm(w) for w, _ in words[i : i + len(parts)]] == parts:
            for _, toks in words[i : i + len(parts)]:
                found.extend(toks)
    if not found:
        raise PromptError(f"word {word!r} is not in the prompt {prompt!r}")
    return found


def swap_words(tokenizer, source: str, target: str) -> tuple[list, list]:
    """The two prompts' :func:`word_tokens` for a word swap (P2P "replace"), which pairs them word by
    word: prompts with different numbers of words are refused."""
    src_words, tgt_words = word_tokens(tokenizer, source), word_tokens(tokenizer, target)
    if len(src_words) != len(tgt_words):
        raise PromptError(
            f"word swap needs prompts with the same number of words (source {len(src_words)}, target "
            f"{len(tgt_words)}); use --p2p refine for prompts that differ in length"
        )
    return src_words, tgt_words


def check_blend_words(tokenizer, source: str, target: str, words: tuple[str, str] | None) -> None:
    """Fail before any UNet call when a blend word is missing from its prompt."""
    if words is None:
        return
    if len(words) != 2:
        raise PromptError("blend words are two: a source word and a target word")
    token_positions(tokenizer, source, words[0])
    token_positions(tokenizer, target, words[1])
