"""Inversions: each maps (model, image latent, source prompt) to a :class:`Trajectory`.

Every entry of :data:`INVERSIONS` is ``name -> (options dataclass, function)`` with the function's
signature ``(bundle, z0, prompt, num_steps, guidance, options, progress) -> Trajectory``.
"""

from .ddim import DDIMInversionOptions, ddim_inversion, ddim_latents
from .null_text import NullTextOptions, null_text_inversion
from .simple import DirectInversionOptions, NegativePromptOptions, direct_inversion, negative_prompt_inversion
from .spd import SPDOptions, spd_inversion
from .trajectory import Trajectory

INVERSIONS = {
    "ddim": (DDIMInversionOptions, ddim_inversion),
    "null-text": (NullTextOptions, null_text_inversion),
    "npi": (NegativePromptOptions, negative_prompt_inversion),
    "direct": (DirectInversionOptions, direct_inversion),
    "spd": (SPDOptions, spd_inversion),
}

__all__ = [
    "INVERSIONS",
    "DDIMInversionOptions",
    "DirectInversionOptions",
    "NegativePromptOptions",
    "NullTextOptions",
    "SPDOptions",
    "Trajectory",
    "ddim_inversion",
    "ddim_latents",
    "direct_inversion",
    "negative_prompt_inversion",
    "null_text_inversion",
    "spd_inversion",
]
