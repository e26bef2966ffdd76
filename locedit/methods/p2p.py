"""Prompt-to-Prompt as an editing method: the engine alone, on any inversion, with an optional
local blend from attention (blend words) or from a user mask."""

from __future__ import annotations

from dataclasses import dataclass

from ..control.options import LocalBlendOptions, P2POptions
from ..errors import LoceditError
from .base import Citation, EditRequest, Method, Plan

P2P_PAPER = Citation("Hertz et al., Prompt-to-Prompt Image Editing with Cross-Attention Control, ICLR 2023",
                     "Sec. 3.2 (word swap, refinement, re-weighting), appendix (LocalBlend)",
                     "google/prompt-to-prompt (seq_aligner.py, prompt-to-prompt_stable.ipynb)")


@dataclass(frozen=True)
class P2PEditOptions:
    """Prompt-to-Prompt (see :mod:`locedit.control.p2p`); the paper and the authors' code agree on
    every option, so both presets are the defaults."""

    p2p: P2POptions = P2POptions()
    blend: LocalBlendOptions = LocalBlendOptions()


def latent_user_mask(bundle, mask):
    """(1, 1, S, S) image mask -> binary (1, 1, h, w) latent mask (a cell is in when any pixel is)."""
    from ..masks import check_mask, to_latent_mask

    mask = check_mask(mask, (bundle.image_size, bundle.image_size))
    side = bundle.image_size // bundle.vae_scale
    return to_latent_mask(mask, (side, side)).to(bundle.device)


def check_p2p(text, request: EditRequest, p2p: P2POptions) -> None:
    """Prompt-level checks of the P2P engine (``text``: the bundle or its tokenizer alone,
    :meth:`Method.check_text`)."""
    from ..diffusion.text import swap_words, token_positions

    text.token_ids(request.source)
    text.token_ids(request.target)
    if p2p.mode == "replace":
        swap_words(text.tokenizer, request.source, request.target)
    for word, _ in p2p.reweight:
        token_positions(text.tokenizer, request.target, word)


def check_alignment(bundle, request: EditRequest, p2p: P2POptions) -> None:
    """A word swap's token alignment fits the model's token length (the model's side of
    :func:`check_p2p`)."""
    from ..control.alignment import replace_matrix

    if p2p.mode == "replace":
        replace_matrix(bundle.tokenizer, request.source, request.target, bundle.max_tokens)


def check_blend(request: EditRequest, blend: LocalBlendOptions) -> None:
    """The attention blend's threshold and pooling act only with blend words."""
    if request.blend_words is None and blend.threshold != LocalBlendOptions().threshold:
        raise LoceditError("--blend-threshold needs --blend-words (it thresholds their attention maps)")
    if request.blend_words is None and request.mask is None and blend.start != LocalBlendOptions().start:
        raise LoceditError("--blend-start needs --blend-words or --mask (there is no blend otherwise)")
    if request.blend_words is not None and request.mask is not None:
        raise LoceditError("--blend-words and --mask both define the blend mask: give one")


def p2p_controller(bundle, request: EditRequest, p2p: P2POptions, blend: LocalBlendOptions):
    from ..attention import map_level, unet_sites
    from ..control.p2p import Prompt2Prompt

    user = latent_user_mask(bundle, request.mask) if request.mask is not None else None
    level = map_level(unet_sites(bundle.unet))
    return Prompt2Prompt(p2p, bundle.tokenizer, request.source, request.target, request.num_steps, level,
                         user_mask=user, blend_words=request.blend_words, blend=blend)


class P2P(Method):
    name = "p2p"
    summary = "Prompt-to-Prompt: the target branch takes the source's attention maps (any inversion)"
    Options = P2PEditOptions
    uses = frozenset({"mask", "blend_words", "inversion"})
    papers = (P2P_PAPER,)

    @classmethod
    def check_text(cls, text, request, options) -> None:
        from ..diffusion.text import check_blend_words

        check_p2p(text, request, options.p2p)
        check_blend(request, options.blend)
        check_blend_words(text.tokenizer, request.source, request.target, request.blend_words)

    @classmethod
    def check(cls, bundle, request, options) -> None:
        from ..masks import check_mask

        cls.check_text(bundle, request, options)
        check_alignment(bundle, request, options.p2p)
        if request.mask is not None:
            check_mask(request.mask, (bundle.image_size, bundle.image_size))

    @classmethod
    def build(cls, bundle, request, options) -> Plan:
        return Plan(p2p_controller(bundle, request, options.p2p, options.blend))
