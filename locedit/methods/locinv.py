"""LocInv as an editing method: its own inversion (per-step noun tokens learned from the priors of
source-prompt nouns, with null-text per step), then Prompt-to-Prompt with the learned tokens
(Tang et al., 2024; see :mod:`locedit.guidance.locinv`)."""

from __future__ import annotations

from dataclasses import dataclass

from ..control.options import LocalBlendOptions, P2POptions
from ..errors import LoceditError
from ..guidance.options import LocInvOptions
from .base import Citation, Method, Plan
from .p2p import P2P

LOCINV_PAPER = Citation("Tang et al., LocInv: Localization-aware Inversion for Text-Guided Image Editing, "
                        "CVPR 2024 AI4CC workshop", "Sec. 3.3-3.4, Eq. 5-8",
                        "wangkai930418/DPL (LocInv scripts: seg and det)")


@dataclass(frozen=True)
class LocInvEditOptions:
    """Token learning and null-text (``locinv``), then P2P with cross 0.8 and self 0.4 (their
    editing scripts), refine or replace, optional local blend."""

    locinv: LocInvOptions = LocInvOptions()
    # self-attention injected at maps of 16x16 and coarser on SD (the editor's `if H <= 256`; the
    # paper is silent), one level coarser than P2P's default
    p2p: P2POptions = P2POptions(mode="refine", cross_replace=0.8, self_replace=0.4, self_min_level=2)
    blend: LocalBlendOptions = LocalBlendOptions()

    # DPL's editor counts its windows in steps (`curr_step_index < 40` of 50), not through P2P's
    # (N + 1)-row alpha table: the fraction of N is the code's reading too
    PRESETS = {"official": {"p2p": {"cross_window": "n"}}}


class LocInv(Method):
    name = "locinv"
    takes_gradients = True
    summary = "per-step noun tokens learned from priors of source-prompt nouns (--region NOUN=MASK), then P2P"
    Options = LocInvEditOptions
    uses = frozenset({"source_regions", "pairs", "mask", "blend_words"})
    papers, built_on = (LOCINV_PAPER,), ("p2p",)

    needs = frozenset({"regions"})
    missing = "locinv needs at least one noun region: --region NOUN=MASK.png (or NOUN=x0,y0,x1,y1)"

    @classmethod
    def check_text(cls, text, request, options) -> None:
        P2P.check_text(text, request, options)

    @classmethod
    def check(cls, bundle, request, options) -> None:
        if not request.regions:
            raise LoceditError(cls.missing)
        P2P.check(bundle, request, options)  # the engine's checks (options.p2p, options.blend)

    @classmethod
    def build(cls, bundle, request, options) -> Plan:
        return P2P.build(bundle, request, options)  # P2P; the learned tokens come with the trajectory

    @classmethod
    def invert(cls, bundle, image, request, options, progress=None):
        from ..guidance.locinv import ENCODE_SEED, locinv_inversion

        seed = ENCODE_SEED if options.locinv.encode == "sample" else None
        return locinv_inversion(bundle, bundle.encode_image(image, sample_seed=seed), request.source, list(request.regions),
                                request.num_steps, request.guidance, list(request.pairs), options.locinv, progress)
