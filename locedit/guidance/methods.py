"""MAG-Edit and MDE-Edit as configurations of the latent-guidance loop on top of P2P refine.

Both take regions: a word of the target prompt tied to a mask (1, 1, S, S) at the model's image
size (a box is a rectangular mask). Each returns the controller (P2P + map capture) and the
guidance hook that :func:`locedit.pipeline.sample` runs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..attention import map_level, unet_sites
from ..control import P2POptions, Prompt2Prompt
from ..diffusion.text import token_positions
from ..errors import LoceditError, MaskError, PromptError
from ..masks import check_mask, dilate
from . import losses as L
from .loop import Chain, GuidanceOptions, LatentGuidance, MapCapture, latent_mask_from, map_mask_from

MAG_LOSSES = ("token-ratio", "spatial-ratio")


@dataclass(frozen=True)
class Region:
    word: str  # one or more words of the target prompt
    mask: torch.Tensor  # (1, 1, S, S) in [0, 1]


@dataclass(frozen=True)
class MAGEditOptions:
    """MAG-Edit (Mao et al., ACM MM 2024) defaults: NTI inversion, P2P refine with cross 0.8 and
    self 0.5, tau = 25 guided steps of 15 iterations, delta 2.5 scaled by sigma_t (authors' code),
    token-ratio loss (Eq. 1) or spatial-ratio loss (Eq. 2, lambda 3), optional negative words
    (Eq. 3), then for the last 15 steps the source branch outside the 3x3-dilated mask."""

    loss: str = "token-ratio"
    spatial_lambda: float = 3.0
    negative_words: tuple[str, ...] = ()
    lambda_p: float = 1.0
    lambda_ng: float = 1.0
    guided_steps: int = 25
    iterations: int = 15
    step_size: float = 2.5
    sigma_scaling: bool = True
    cross_replace: float = 0.8
    self_replace: float = 0.5
    blend_last: int = 15
    dilate: int = 1

    def __post_init__(self):
        if self.loss not in MAG_LOSSES:
            raise LoceditError(f"loss must be one of {', '.join(MAG_LOSSES)}, got {self.loss!r}")
        GuidanceOptions(self.guided_steps, self.iterations, self.step_size, self.sigma_scaling)
        if self.blend_last < 0:
            raise LoceditError(f"blend_last must be >= 0, got {self.blend_last}")


@dataclass(frozen=True)
class MDEEditOptions:
    """MDE-Edit (Zhu et al., 2025): L = lambda1 OAL (Eq. 4-5) + lambda2 CCL (Eq. 6) with
    lambda1 = 1, lambda2 = 1.25 (paper; the code hard-codes 1.5) over the first 20 of 50 steps;
    merge Eq. 8; source branch outside the dilated masks for the last 15 steps. The paper gives no
    iteration count or step size: MAG-Edit's 15 iterations and sigma_t scaling, with delta 0.1
    instead of 2.5, because OAL's gradient inside the mask is 8-16x MAG-Edit's token-ratio
    gradient (measured on the bundled model; the authors' code never saw it, its OAL gradient being
    zero) and delta >= 0.5 wrecks the edited region."""

    lambda_oal: float = 1.0
    lambda_ccl: float = 1.25
    guided_steps: int = 20
    iterations: int = 15
    step_size: float = 0.1
    sigma_scaling: bool = True
    cross_replace: float = 0.8
    self_replace: float = 0.5
    blend_last: int = 15
    dilate: int = 1

    def __post_init__(self):
        GuidanceOptions(self.guided_steps, self.iterations, self.step_size, self.sigma_scaling)


def _check_regions(bundle, target: str, regions: list[Region], what: str = "region") -> list[list[int]]:
    size = (bundle.image_size, bundle.image_size)
    n_tokens = len(bundle.token_ids(target)) - 2
    if len(regions) > n_tokens:
        raise PromptError(f"{len(regions)} {what}s but the target prompt has only {n_tokens} tokens")
    out = []
    for r in regions:
        try:
            out.append(token_positions(bundle.tokenizer, target, r.word))
        except PromptError:
            raise PromptError(f"{what} word {r.word!r} is not in the target prompt {target!r}") from None
        check_mask(r.mask, size, f"mask of {what} {r.word!r}")
    return out


def _engine(bundle, source, target, options, regions, num_steps):
    """P2P refine with the union of the (dilated) region masks as the blend for the last steps."""
    side = bundle.image_size // bundle.vae_scale
    latent = latent_mask_from(torch.cat([r.mask for r in regions]), (side, side)).to(bundle.device)
    blend_mask = dilate(latent, options.dilate)
    start = max(0.0, (num_steps - options.blend_last) / num_steps) if options.blend_last else 1.0
    p2p_opts = P2POptions(mode="refine", cross_replace=options.cross_replace, self_replace=options.self_replace,
                          blend_start=min(start, 1.0))
    level = map_level(unet_sites(bundle.unet))
    p2p = Prompt2Prompt(p2p_opts, bundle.tokenizer, source, target, num_steps, level,
                        user_mask=blend_mask if options.blend_last else None)
    return p2p, level, latent


def _other_tokens(p2p: Prompt2Prompt, target_ids: list[int], exclude: set[int]) -> list[int]:
    """Injected (aligned) prompt tokens, without start/end tokens and the excluded positions."""
    return [j for j in range(1, len(target_ids) - 1) if p2p.alphas[j] > 0 and j not in exclude]


def mag_edit(bundle, source: str, target: str, regions: list[Region], num_steps: int,
             options: MAGEditOptions = MAGEditOptions()):
    """Build (controller, guidance) for MAG-Edit; several regions sum their losses (Eq. 5)."""
    if not regions:
        raise MaskError("mag-edit needs at least one region: --region WORD=MASK.png (or WORD=x0,y0,x1,y1)")
    edit_tokens = _check_regions(bundle, target, regions)
    neg_tokens = []
    for w in options.negative_words:
        try:
            neg_tokens.extend(token_positions(bundle.tokenizer, target, w))
        except PromptError:
            raise PromptError(f"negative word {w!r} is not in the target prompt {target!r}") from None
    p2p, level, latent = _engine(bundle, source, target, options, regions, num_steps)
    ids = bundle.tokenizer(target).input_ids
    excluded = {j for toks in edit_tokens for j in toks} | set(neg_tokens)
    groups = {f"edit{k}": toks for k, toks in enumerate(edit_tokens)}
    groups["other"] = _other_tokens(p2p, ids, excluded)
    groups["neg"] = neg_tokens
    capture = MapCapture(groups, level)
    side = bundle.image_size // bundle.vae_scale // 2**level
    map_masks = [map_mask_from(r.mask, side).to(bundle.device) for r in regions]

    def constraint(a, m, other):
        if options.loss == "token-ratio":
            return L.token_ratio_loss(a, other, m)
        return L.spatial_ratio_loss(a, m, options.spatial_lambda)

    def loss(cap: MapCapture) -> torch.Tensor:
        other = cap.maps("other") if "other" in cap.token_groups else None
        total = 0.0
        for k, m in enumerate(map_masks):
            a = cap.maps(f"edit{k}").sum(0)
            other_k = other if other is not None else a.new_zeros(1, a.shape[0])
            neg = constraint(cap.maps("neg").sum(0), m, other_k) if neg_tokens else None
            total = total + L.with_negative(constraint(a, m, other_k), neg, options.lambda_p, options.lambda_ng)
        return total

    gopts = GuidanceOptions(options.guided_steps, options.iterations, options.step_size, options.sigma_scaling)
    # capture after the engine: the loss sees the injected maps A_hat (MAG-Edit Sec. 3.2)
    return Chain([p2p, capture]), LatentGuidance(gopts, capture, loss, latent)


def mde_edit(bundle, source: str, target: str, objects: list[Region], attributes: list[Region], num_steps: int,
             options: MDEEditOptions = MDEEditOptions()):
    """Build (controller, guidance) for MDE-Edit: OAL over the object words, CCL over the attribute
    words, merged inside the union of all masks (Eq. 8). The maps are the target's own, taken before
    P2P's injection (see the comment at the end)."""
    if not objects and not attributes:
        raise MaskError("mde-edit needs regions: --region WORD=MASK.png for objects, --attribute WORD=MASK.png")
    obj_tokens = _check_regions(bundle, target, objects)
    attr_tokens = _check_regions(bundle, target, attributes, "attribute")
    all_regions = list(objects) + list(attributes)
    p2p, level, latent = _engine(bundle, source, target, options, all_regions, num_steps)
    ids = bundle.tokenizer(target).input_ids
    excluded = {j for toks in obj_tokens + attr_tokens for j in toks}
    groups = {f"obj{k}": t for k, t in enumerate(obj_tokens)}
    groups.update({f"attr{k}": t for k, t in enumerate(attr_tokens)})
    groups["other"] = _other_tokens(p2p, ids, excluded)
    capture = MapCapture(groups, level)
    side = bundle.image_size // bundle.vae_scale // 2**level
    obj_masks = [map_mask_from(r.mask, side).to(bundle.device) for r in objects]
    attr_masks = [map_mask_from(r.mask, side).to(bundle.device) for r in attributes]

    def loss(cap: MapCapture) -> torch.Tensor:
        total = 0.0
        if obj_masks:
            maps = torch.stack([cap.maps(f"obj{k}").sum(0) for k in range(len(obj_masks))])
            total = total + options.lambda_oal * L.object_alignment_loss(maps, torch.stack(obj_masks))
        for k, m in enumerate(attr_masks):
            a = cap.maps(f"attr{k}").sum(0)
            other = cap.maps("other") if "other" in cap.token_groups else a.new_zeros(1, a.shape[0])
            total = total + options.lambda_ccl * L.token_ratio_loss(a, other, m)
        return total

    gopts = GuidanceOptions(options.guided_steps, options.iterations, options.step_size, options.sigma_scaling)
    # capture before the engine: OAL needs the target word's own map; an object noun shared by both
    # prompts is injected by refine, and its injected map (the source's) carries no gradient
    return Chain([capture, p2p]), LatentGuidance(gopts, capture, loss, latent)
