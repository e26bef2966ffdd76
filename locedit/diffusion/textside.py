"""A model's tokenizer alone, for the prompt checks that come before the model is loaded.

:class:`TextSide` offers what those checks read of a :class:`~locedit.diffusion.ModelBundle`
(``tokenizer``, ``max_tokens``, ``token_ids``), so a method's :meth:`~locedit.methods.base.Method.
check_text` runs on either. Loading it reads the tokenizer's files only: no torch, no weights (about
a second, most of it importing transformers), so a word swap with mismatched word counts or a blend
word missing from its prompt is refused before the UNet, VAE and text encoder are built.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import PromptError


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """Token ids of ``prompt`` with start and end tokens, unpadded; refuses over-long prompts."""
    ids = tokenizer(prompt, truncation=False).input_ids
    limit = int(tokenizer.model_max_length)
    if len(ids) > limit:
        raise PromptError(f"prompt is {len(ids) - 2} tokens, over this model's limit of {limit - 2}: {prompt[:60]!r}")
    return list(ids)


class TextSide:
    """A tokenizer with a bundle's prompt interface (``name``: the model's)."""

    def __init__(self, tokenizer, name: str = ""):
        self.tokenizer, self.name = tokenizer, name

    @property
    def max_tokens(self) -> int:
        return int(self.tokenizer.model_max_length)

    def token_ids(self, prompt: str) -> list[int]:
        return prompt_ids(self.tokenizer, prompt)


def tokenizer_folder(model: str) -> Path | None:
    """The folder of ``model``'s (first) tokenizer when it is on this disk: a built-in bundled model or
    a local diffusers folder; None for a hub id or a model built in code (their checks wait for the
    load)."""
    from .names import BUILTIN_MODEL_NAMES, BUNDLED_DIR

    if model in BUILTIN_MODEL_NAMES:
        folder = BUNDLED_DIR / model / "tokenizer"
    else:
        folder = Path(model).expanduser() / "tokenizer"
    return folder if (folder / "tokenizer_config.json").is_file() else None


def load_text_side(model: str) -> TextSide | None:
    """``model``'s tokenizer as a :class:`TextSide`, or None when it cannot be had without loading the
    model (then the same checks run on the loaded model, before its first UNet call)."""
    folder = tokenizer_folder(model)
    if folder is None:
        return None
    try:
        from transformers import CLIPTokenizer

        return TextSide(CLIPTokenizer.from_pretrained(str(folder)), model)
    except Exception:  # an unreadable tokenizer is the loader's to report, with its own message
        return None
