"""MAG-Edit: mask-based attention-adjusted guidance (Mao et al., ACM MM 2024).

On top of P2P (refinement in the paper's examples), for the first tau = 25 of 50 steps and
MAX_IT = 15 iterations each, the target latent inside the mask M moves against the gradient of a
constraint on the injected cross-attention maps A_hat at the 16x16 level (SD; the map level on
other models), computed by one UNet call on [source, target] without CFG (Alg. 1, Eq. 4):

    z*_t <- z*_t - M (.) delta sigma_t grad L,   sigma_t = sqrt((1 - abar_t) / abar_t)

with L the token ratio (Eq. 1) or the spatial ratio (Eq. 2, lambda = 3) of each edit word inside
its mask, averaged over the edit words (Eq. 5 with equal weights; the code divides by the word
count), minus lambda_ng times the same constraint on negative words (Eq. 3). For the last 15
steps, the target's latents outside the 3x3-dilated mask are the source's.

Against the authors' code (HelenMao/MAG-Edit, ``code_tr/network.py``; ``docs/conformance.md``):
- the ratios are computed per head and per layer and the loss averaged over them, with the word's
  token maps averaged and the denominator summing all K token positions (``compute_ca_TR``);
- masks are nearest-resized and binary, at the map level and at latent resolution;
- delta = 2.5 scaled by sigma_t: the paper writes delta and gives no value;
- the spatial ratio (Eq. 2) is in their repository but never called; the negative constraint
  (Eq. 3) is not in their code: both are built from the paper.
The paper and the code agree on every option locedit exposes, so both presets are the defaults.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..control.options import LocalBlendOptions, P2POptions
from ..errors import LoceditError, MaskError, PromptError
from ..guidance.options import GuidanceOptions
from .base import Citation, EditRequest, Method, Plan
from .p2p import check_alignment, check_p2p

MAG_LOSSES = ("token-ratio", "spatial-ratio")
MAG_PAPER = Citation("Mao et al., MAG-Edit: Localized Image Editing in Complex Scenarios via Mask-Based "
                     "Attention-Adjusted Guidance, ACM MM 2024", "Eq. 1-5, Alg. 1",
                     "HelenMao/MAG-Edit (code_tr/network.py: compute_ca_TR, update_latent_TR)")


@dataclass(frozen=True)
class MAGEditOptions:
    """MAG-Edit's options; defaults are the paper's and its code's (they agree)."""

    p2p: P2POptions = P2POptions(mode="refine", cross_replace=0.8, self_replace=0.5)
    guidance: GuidanceOptions = GuidanceOptions(guided_steps=25, iterations=15, step_size=2.5, sigma_scaling=True)
    loss: str = field(default="token-ratio", metadata={
        "flag": "mag-loss", "choices": MAG_LOSSES, "help": "token ratio (Eq. 1) or spatial ratio (Eq. 2)"})
    spatial_lambda: float = field(default=3.0, metadata={
        "flag": "spatial-lambda", "type": float, "help": "lambda of the spatial ratio (Eq. 2)"})
    negative_words: tuple[str, ...] = field(default=(), metadata={
        "flag": "negative", "repeat": True, "metavar": "WORD",
        "help": "a target-prompt word whose share inside the mask is pushed down (Eq. 3; repeatable)"})
    lambda_p: float = 1.0
    lambda_ng: float = field(default=1.0, metadata={
        "flag": "lambda-ng", "type": float, "help": "weight of the negative constraint (Eq. 3)"})
    blend_last: int = field(default=15, metadata={
        "flag": "blend-last", "type": int, "help": "last steps that take the source outside the dilated masks"})
    dilate: int = 1  # radius of the blend mask's dilation (3x3)

    def __post_init__(self):
        if self.loss not in MAG_LOSSES:
            raise LoceditError(f"loss must be one of {', '.join(MAG_LOSSES)}, got {self.loss!r}")
        if self.blend_last < 0:
            raise LoceditError(f"blend_last must be >= 0, got {self.blend_last}")
        if self.lambda_ng != 1.0 and not self.negative_words:
            raise LoceditError("--lambda-ng needs --negative words")


def check_region_words(text, prompt: str, words, what: str = "region") -> list[list[int]]:
    """Token positions of each region word in ``prompt`` (``text``: the bundle or its tokenizer
    alone); a word given twice or absent is refused."""
    from ..diffusion.text import token_positions

    lowered = [w.lower() for w in words]
    for w in lowered:
        if lowered.count(w) > 1:
            raise PromptError(f"{what} word {w!r} is given twice; give each word one mask (a union is one mask)")
    out = []
    for w in words:
        try:
            out.append(token_positions(text.tokenizer, prompt, w))
        except PromptError:
            raise PromptError(f"{what} word {w!r} is not in the prompt {prompt!r}") from None
    return out


def check_regions(bundle, prompt: str, regions, what: str = "region") -> list[list[int]]:
    """:func:`check_region_words`, and each region's mask checked against the model size."""
    from ..masks import check_mask

    out = check_region_words(bundle, prompt, [r.word for r in regions], what)
    for r in regions:
        check_mask(r.mask, (bundle.image_size, bundle.image_size), f"mask of {what} {r.word!r}")
    return out


def guided_p2p(bundle, request: EditRequest, p2p: P2POptions, blend_last: int, blend_mask):
    """The P2P engine of the guidance methods: the given injection, and for the last ``blend_last``
    steps the source branch outside ``blend_mask`` (1, 1, h, w)."""
    from ..attention import map_level, unet_sites
    from ..control.p2p import Prompt2Prompt

    level = map_level(unet_sites(bundle.unet))
    n = request.num_steps
    engine = Prompt2Prompt(p2p, bundle.tokenizer, request.source, request.target, n, level,
                           user_mask=blend_mask if blend_last else None, blend=LocalBlendOptions(start=0.0))
    engine.blend_from_step = max(0, n - blend_last)
    return engine, level


def map_side(bundle, level: int) -> int:
    return bundle.unet.config.sample_size // 2**level


def check_map_masks(bundle, regions, what: str = "region") -> None:
    """Refuse a mask that nearest resizing to the attention maps empties (a small mask, or one
    between the sample points): its ratio constraint has no pixel to count. The authors' code
    divides by that empty count and turns the edit into NaN (found side by side, docs/peers.md)."""
    from ..attention import map_level, unet_sites
    from ..guidance.loop import map_mask_from

    s = map_side(bundle, map_level(unet_sites(bundle.unet)))
    for r in regions:
        if not map_mask_from(r.mask, s, "nearest").any():
            raise MaskError(f"the mask of {what} {r.word!r} is empty at the {s}x{s} attention maps (nearest "
                            f"resize); give a larger mask or box")


class MAGEdit(Method):
    name = "mag-edit"
    takes_gradients = True
    summary = "latent guidance inside a mask towards the edit words' attention (one or more objects)"
    Options = MAGEditOptions
    uses = frozenset({"regions", "inversion"})
    papers, built_on = (MAG_PAPER,), ("p2p",)

    needs = frozenset({"regions"})
    missing = "mag-edit needs at least one region: --region WORD=MASK.png (or WORD=x0,y0,x1,y1)"

    @classmethod
    def check_text(cls, text, request, options) -> None:
        from ..diffusion.text import token_positions

        check_p2p(text, request, options.p2p)
        check_region_words(text, request.target, [r.word for r in request.regions])
        for w in options.negative_words:
            try:
                token_positions(text.tokenizer, request.target, w)
            except PromptError:
                raise PromptError(f"negative word {w!r} is not in the target prompt {request.target!r}") from None

    @classmethod
    def check(cls, bundle, request, options) -> None:
        if not request.regions:
            raise MaskError(cls.missing)
        cls.check_text(bundle, request, options)
        check_alignment(bundle, request, options.p2p)
        check_regions(bundle, request.target, request.regions)
        check_map_masks(bundle, request.regions)

    @classmethod
    def build(cls, bundle, request, options) -> Plan:
        import torch

        from ..attention import Chain
        from ..diffusion.text import token_positions
        from ..guidance import losses as L
        from ..guidance.loop import LatentGuidance, MapCapture, latent_mask_from, map_mask_from
        from ..masks import dilate

        regions = list(request.regions)
        edit_tokens = check_regions(bundle, request.target, regions)
        neg_tokens = [p for w in options.negative_words for p in token_positions(bundle.tokenizer, request.target, w)]
        side = bundle.image_size // bundle.vae_scale
        latent = latent_mask_from(torch.cat([r.mask for r in regions]), (side, side)).to(bundle.device)
        engine, level = guided_p2p(bundle, request, options.p2p, options.blend_last, dilate(latent, options.dilate))
        capture = MapCapture(level)
        s = map_side(bundle, level)
        masks = [map_mask_from(r.mask, s, "nearest").to(bundle.device) for r in regions]

        def constraint(records, tokens, mask):
            if options.loss == "token-ratio":
                return L.token_ratio_loss(records, tokens, mask)
            return L.spatial_ratio_loss(records, tokens, mask, options.spatial_lambda)

        def loss(cap):
            total = 0.0
            for tokens, m in zip(edit_tokens, masks):
                neg = constraint(cap.records, neg_tokens, m) if neg_tokens else None
                total = total + L.with_negative(constraint(cap.records, tokens, m), neg, options.lambda_p,
                                                options.lambda_ng)
            return total / len(masks)  # Eq. 5 with equal weights

        # capture after the engine: the loss sees the injected maps A_hat (Sec. 3.2)
        guide = LatentGuidance(options.guidance, capture, loss, latent)
        return Plan(Chain([engine, capture]), (guide,))
