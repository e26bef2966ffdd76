"""Plug-and-Play as an editing method: the source's decoder features and self-attention queries and
keys injected into the target for the first steps, on any inversion (see :mod:`locedit.control.pnp`).

The authors run it on a 1000-step DDIM inversion made with the empty prompt
(``preprocess.py --inversion_prompt ''``), read at the 50 sampling timesteps; PnPInversion runs it on
DDIM and direct inversion. Here the source row reads the trajectory of ``--inversion`` (made with
the source prompt, as every engine here) at each step, on the empty prompt as the code feeds it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LoceditError
from ..events import PinSource
from .base import Citation, Method, Plan

PNP_PAPER = Citation(
    "Tumanyan et al., Plug-and-Play Diffusion Features for Text-Driven Image-to-Image Translation, CVPR 2023",
    "Sec. 3-4 (feature injection at the decoder's 4th layer, self-attention injection; tau_f, tau_A)",
    "MichalGeyer/pnp-diffusers (pnp.py, pnp_utils.py, config_pnp.yaml)")


# the target's unconditional prompt in both authors' PnP scripts (config_pnp.yaml, run_SPDInv_PNP.py)
NEGATIVE = "ugly, blurry, black, low res, unrealistic"


@dataclass(frozen=True)
class PnPOptions:
    """``feature_fraction`` and ``attention_fraction``: the shares of the steps with feature and
    query/key injection (``pnp_f_t`` 0.8 and ``pnp_attn_t`` 0.5: 40 and 25 of 50 steps);
    ``feature_block``: the residual block whose residual branch is injected (SD's
    ``up_blocks.1.resnets.1``); ``negative_prompt``: the target's unconditional prompt
    (``config_pnp.yaml``, and SPDInv's ``run_SPDInv_PNP.py`` passes the same)."""

    feature_fraction: float = field(default=0.8, metadata={
        "flag": "pnp-features", "type": float, "help": "share of the steps with feature injection (pnp_f_t, 0.8)"})
    attention_fraction: float = field(default=0.5, metadata={
        "flag": "pnp-attention", "type": float,
        "help": "share of the steps with self-attention query/key injection (pnp_attn_t, 0.5)"})
    feature_block: str = field(default="up_blocks.1.resnets.1", metadata={
        "flag": "pnp-feature-block",
        "help": "the UNet residual block whose residual-branch output is injected (default up_blocks.1.resnets.1)"})
    negative_prompt: str = field(default=NEGATIVE, metadata={
        "flag": "pnp-negative", "default_text": repr(NEGATIVE),
        "help": "the target's unconditional prompt (both authors' PnP scripts use this one; '' for plain CFG, "
                "which null-text and negative-prompt inversion need: they bring their own unconditional embedding)"})

    def __post_init__(self):
        for name in ("feature_fraction", "attention_fraction"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise LoceditError(f"pnp {name} must be in [0, 1], got {v}")

    def steps(self, num_steps: int) -> tuple[int, int]:
        """(feature steps, attention steps): the code's ``int(n_timesteps * fraction)``."""
        return int(num_steps * self.feature_fraction), int(num_steps * self.attention_fraction)


class PnP(Method):
    name = "pnp"
    summary = "Plug-and-Play: the source's decoder features and self-attention queries/keys injected (any inversion)"
    Options = PnPOptions
    uses = frozenset({"inversion"})
    inversion = "ddim"  # Plug-and-Play inverts real images with DDIM
    papers = (PNP_PAPER,)

    @classmethod
    def check(cls, bundle, request, options) -> None:
        from ..control.pnp import has_feature_module

        if not has_feature_module(bundle.unet, options.feature_block):
            raise LoceditError(f"--pnp-feature-block {options.feature_block!r} is not a residual block of this UNet")
        cls.check_text(bundle, request, options)

    @classmethod
    def check_text(cls, text, request, options) -> None:
        super().check_text(text, request, options)
        if options.negative_prompt:
            text.token_ids(options.negative_prompt)
            if request.uncond != "null":
                what = {"learned": "learned by null-text inversion", "source": "the source prompt's (NPI)"}
                raise LoceditError(f"PnP's negative prompt would replace the unconditional embedding, which here is "
                                   f"{what.get(request.uncond, request.uncond)}: pass --pnp-negative '' to run PnP "
                                   "with the inversion's own")

    @classmethod
    def build(cls, bundle, request, options) -> Plan:
        from ..attention import unet_sites
        from ..control.masactrl import block_order
        from ..control.pnp import PlugAndPlay, injected_self_sites

        sites = unet_sites(bundle.unet)
        feature_steps, attention_steps = options.steps(request.num_steps)
        ctrl = PlugAndPlay(feature_steps, attention_steps, request.num_steps,
                           injected_self_sites(block_order(sites), sites), options.feature_block)
        return Plan(ctrl, (PinSource(),), prompts={"source": ""}, null_prompt=options.negative_prompt,
                    info={"pnp": {"feature_steps": feature_steps, "attention_steps": attention_steps}})
