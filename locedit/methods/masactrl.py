"""MasaCtrl as an editing method: mutual self-attention on any inversion, with an optional user
mask for the mask-guided variant (see :mod:`locedit.control.masactrl`). Meant for non-rigid edits
(pose, action), where Prompt-to-Prompt's map injection holds the layout too tightly."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LoceditError
from .base import Citation, Method, Plan

MASACTRL_PAPER = Citation(
    "Cao et al., MasaCtrl: Tuning-Free Mutual Self-Attention Control for Consistent Image Synthesis and Editing, "
    "ICCV 2023", "Sec. 3.2, Eq. 4-5 (mutual self-attention), Sec. 3.3, Eq. 6-7 (mask-guided)",
    "TencentARC/MasaCtrl (masactrl/masactrl.py: MutualSelfAttentionControl, MutualSelfAttentionControlMask, "
    "MutualSelfAttentionControlMaskAuto)")


@dataclass(frozen=True)
class MasaCtrlOptions:
    """Where and when the target reads the source's keys and values: steps >= ``start_step``,
    transformer blocks >= ``start_layer`` in forward order (the paper's S = 4 and L = 10 of SD's 16;
    the code's defaults too; on another UNet L defaults to the same share of its blocks, as the
    authors' SDXL script's L = 44 of 70)."""

    start_step: int = field(default=4, metadata={
        "flag": "masactrl-step", "type": int, "help": "first sampling step with mutual self-attention (S)"})
    start_layer: int | None = field(default=None, metadata={
        "flag": "masactrl-layer", "type": int, "default_text": "10 of 16 blocks (SD 1.x), the same share elsewhere",
        "help": "first transformer block, in forward order through down, mid and up blocks (L; default: 10 of "
                "SD 1.x's 16, the same share of another model's blocks: 44 of SDXL's 70, the authors' SDXL choice)"})

    auto_word: str | None = field(default=None, metadata={
        "flag": "masactrl-auto", "metavar": "WORD|SRC:TGT",
        "help": "mask-guided with masks from a word's cross-attention: WORD in both prompts, or SRC in the "
                "source and TGT in the target (the code's MutualSelfAttentionControlMaskAuto, ref_token_idx and "
                "cur_token_idx; instead of --mask)"})
    auto_threshold: float = field(default=0.1, metadata={
        "flag": "masactrl-auto-threshold", "type": float,
        "help": "threshold of the source's normalised map for --masactrl-auto (the code's thres, 0.1)"})

    def __post_init__(self):
        if self.start_step < 0 or (self.start_layer is not None and self.start_layer < 0):
            raise LoceditError("masactrl start_step and start_layer must be >= 0")
        if not 0.0 < self.auto_threshold < 1.0:
            raise LoceditError(f"masactrl auto_threshold must be in (0, 1), got {self.auto_threshold}")

    def auto_words(self) -> tuple[str, str]:
        """(source word, target word) of ``auto_word``."""
        src, _, tgt = self.auto_word.partition(":")
        return src.strip(), (tgt or src).strip()

    def layer(self, blocks: int) -> int:
        """L for a UNet of ``blocks`` transformer blocks: the given one, or 10/16 of them (10 on SD 1.x,
        44 on SDXL's 70, the first of the authors' SDXL script's settings)."""
        return self.start_layer if self.start_layer is not None else round(10 * blocks / 16)


class MasaCtrl(Method):
    name = "masactrl"
    summary = ("MasaCtrl: the target's self-attention reads the source's keys and values (any inversion; --mask or "
               "--masactrl-auto WORD: mask-guided)")
    Options = MasaCtrlOptions
    uses = frozenset({"mask", "inversion"})
    inversion = "ddim"  # its real-image editing runs on DDIM inversion
    papers = (MASACTRL_PAPER,)

    @classmethod
    def check_text(cls, text, request, options) -> None:
        from ..diffusion.text import token_positions

        super().check_text(text, request, options)
        if options.auto_word is not None and request.mask is not None:
            raise LoceditError("--masactrl-auto makes the masks from attention: not with --mask")
        if options.start_step >= request.num_steps:
            raise LoceditError(f"--masactrl-step {options.start_step} is past the last of {request.num_steps} steps: "
                               "nothing would change")
        if options.auto_word is not None:
            src_word, tgt_word = options.auto_words()
            token_positions(text.tokenizer, request.source, src_word)
            token_positions(text.tokenizer, request.target, tgt_word)
        elif options.auto_threshold != 0.1:
            raise LoceditError("--masactrl-auto-threshold needs --masactrl-auto WORD")

    @classmethod
    def check(cls, bundle, request, options) -> None:
        from ..attention import unet_sites
        from ..control.masactrl import block_order
        from ..masks import check_mask

        cls.check_text(bundle, request, options)
        blocks = max(block_order(unet_sites(bundle.unet)).values()) + 1
        if options.layer(blocks) >= blocks:
            raise LoceditError(f"--masactrl-layer {options.start_layer} is past the model's last transformer block "
                               f"({blocks - 1}): nothing would change")
        if request.mask is not None:
            mask = check_mask(request.mask, (bundle.image_size, bundle.image_size))
            if not (mask > 0.5).any() or (mask > 0.5).all():
                raise LoceditError("the MasaCtrl mask is empty or covers the whole image: the foreground and "
                                   "background attention would be one")

    @classmethod
    def build(cls, bundle, request, options) -> Plan:
        from ..attention import unet_sites
        from ..control.masactrl import MutualSelfAttention, block_order
        from .p2p import latent_user_mask

        masks = None
        if request.mask is not None:
            m = latent_user_mask(bundle, request.mask)
            masks = (m, m)
        sites = unet_sites(bundle.unet)
        blocks = block_order(sites)
        layer = options.layer(max(blocks.values()) + 1)
        if options.auto_word is not None:
            from ..attention import map_level
            from ..control.masactrl import MutualSelfAttentionAuto
            from ..diffusion.text import token_positions

            src_word, tgt_word = options.auto_words()
            ctrl = MutualSelfAttentionAuto(options.start_step, layer, request.num_steps, blocks,
                                           token_positions(bundle.tokenizer, request.source, src_word),
                                           token_positions(bundle.tokenizer, request.target, tgt_word),
                                           map_level(sites), options.auto_threshold)
        else:
            ctrl = MutualSelfAttention(options.start_step, layer, request.num_steps, blocks, masks)
        return Plan(ctrl, info={"masactrl": {"start_step": options.start_step, "start_layer": layer,
                                             "masked": masks is not None, "auto_word": options.auto_word}})
