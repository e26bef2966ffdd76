"""User-facing errors.

Every error a user can cause (bad file, bad prompt, bad option, a diverging optimisation) is a
:class:`LoceditError`. The CLI prints it as one ``error: ...`` line on stderr and exits with 2;
anything else is a bug and keeps its traceback.
"""


class LoceditError(Exception):
    """An error caused by input the user can fix; the message is one line."""


class ModelLoadError(LoceditError):
    """A model folder or hub id could not be loaded (missing, incomplete, pickle weights)."""


class PromptError(LoceditError):
    """A prompt or word does not fit the tokenizer or the other prompt."""


class MaskError(LoceditError):
    """A mask is empty, unreadable or does not match the image."""


class OptimisationError(LoceditError):
    """An inner optimisation produced NaN or inf; the message names the step."""
