"""MDE-Edit: multi-object editing by latent guidance (Zhu et al., 2025).

The MAG-Edit loop with two constraints: for the first 20 of 50 steps (15 iterations each), the
target latent moves against the gradient of

    L = lambda1 L_OAL + lambda2 L_CCL      (paper: lambda1 = 1, lambda2 = 1.25)

inside the union of the edit masks (Eq. 8); for the last 15 steps the target's latents outside the
dilated masks are the source's.
- OAL (Eq. 4-5), over the object words: S_hat_i is the target word's *own* cross-attention map
  (softmax over tokens, averaged over heads and the map-level layers, before P2P's injection: a
  word shared by both prompts would otherwise get the source's map, which carries no gradient),
  L_OAL = sum_i BCE(S_hat_i, S_i) + BCE(S_hat_i / max S_hat_i, S_i), S_i the object's mask
  area-resized to the map.
- CCL (Eq. 6), over the attribute words (colour, texture): MAG-Edit's token-ratio constraint on the
  *injected* maps, averaged over the attribute words.

The authors' code (RainbowZhuu/MDE-Edit, ``code/network.py``, ``code/oal_utils.py``) differs, and
``preset("official")`` reproduces it: CCL in the spatial-ratio form ``3 - 4r`` (``ccl_form``),
weight 1.5 (``lambda_ccl``), OAL as a quartic error with label smoothing 0.1 on maps built from
the 16x16 logits bilinearly resized to 32x32 (``oal_form="quartic"``). Its two plain bugs are not
reproduced: its OAL softmax runs over the heads axis (every value becomes 1/heads and the OAL
gradient is exactly zero; we take it over tokens) and its CCL call misses an argument (a
TypeError). The paper gives no step size; the code's is 1 x sigma_t (its ``--scale`` is never
used), which both presets take. Mask shapes follow the code in both presets: nearest-resized,
the object masks 3x3-dilated in the update mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..control.options import P2POptions
from ..errors import LoceditError, MaskError
from ..guidance.options import GuidanceOptions
from .base import Citation, Method, Plan
from .mag_edit import check_map_masks, check_region_words, check_regions, guided_p2p, map_side
from .p2p import check_alignment, check_p2p

OAL_FORMS = ("bce", "quartic")
CCL_FORMS = ("token-ratio", "spatial-ratio")
MDE_PAPER = Citation("Zhu et al., MDE-Edit: Masked Dual-Editing for Multi-Object Image Editing via Diffusion "
                     "Models, 2025", "Eq. 4-8", "RainbowZhuu/MDE-Edit (code/network.py: update_latents2, "
                     "compute_ca_ccl; code/oal_utils.py: mse_loss2, AttentionHook2)")


@dataclass(frozen=True)
class MDEEditOptions:
    """MDE-Edit's options; defaults are the paper's where it is explicit, the code's elsewhere."""

    p2p: P2POptions = P2POptions(mode="refine", cross_replace=0.8, self_replace=0.5)
    guidance: GuidanceOptions = GuidanceOptions(guided_steps=20, iterations=15, step_size=1.0, sigma_scaling=True)
    lambda_oal: float = field(default=1.0, metadata={
        "flag": "lambda-oal", "type": float, "help": "weight of the object alignment loss (lambda1)"})
    lambda_ccl: float = field(default=1.25, metadata={
        "flag": "lambda-ccl", "type": float, "help": "weight of the colour consistency loss (lambda2; code: 1.5)"})
    oal_form: str = field(default="bce", metadata={
        "flag": "oal-form", "choices": OAL_FORMS,
        "help": "bce: Eq. 4-5 on the map-level maps (paper); quartic: the code's smoothed quartic error at twice "
                "the map resolution"})
    oal_smoothing: float = 0.1  # quartic OAL: the code's label smoothing ls
    ccl_form: str = field(default="token-ratio", metadata={
        "flag": "ccl-form", "choices": CCL_FORMS,
        "help": "token-ratio: Eq. 6 (paper); spatial-ratio: the code's 3 - 4r"})
    blend_last: int = field(default=15, metadata={
        "flag": "blend-last", "type": int, "help": "last steps that take the source outside the dilated masks"})
    dilate: int = 1  # 3x3 dilation of the blend mask and of the object masks in the update mask

    PRESETS = {"paper": {}, "official": {"lambda_ccl": 1.5, "oal_form": "quartic", "ccl_form": "spatial-ratio"}}

    def __post_init__(self):
        if self.oal_form not in OAL_FORMS:
            raise LoceditError(f"oal_form must be one of {', '.join(OAL_FORMS)}, got {self.oal_form!r}")
        if self.ccl_form not in CCL_FORMS:
            raise LoceditError(f"ccl_form must be one of {', '.join(CCL_FORMS)}, got {self.ccl_form!r}")


def quartic_maps(records: list, tokens: list[list[int]], side: int):
    """The MDE-Edit code's OAL maps (``AttentionHook2.compute``, softmax axis fixed): each layer's
    logits (heads, P, K) bilinearly resized from ``side`` to ``2 side``, softmax over tokens,
    averaged over layers and heads; each word's tokens summed. Returns (words, 4 P)."""
    import torch
    import torch.nn.functional as F

    probs = []
    for r in records:
        h, p, k = r.shape
        grid = r.permute(0, 2, 1).reshape(h, k, side, side)
        up = F.interpolate(grid.float(), size=(2 * side, 2 * side), mode="bilinear", align_corners=False)
        probs.append(up.flatten(2).softmax(dim=1))  # (heads, K, 4P)
    mean = torch.stack(probs).mean(dim=(0, 1))  # (K, 4P)
    return torch.stack([mean[t].sum(0) for t in tokens])


class MDEEdit(Method):
    name = "mde-edit"
    takes_gradients = True
    summary = "several objects (OAL on --region words) and attributes (CCL on --attribute words) by latent guidance"
    Options = MDEEditOptions
    uses = frozenset({"regions", "attributes", "inversion"})
    papers, built_on = (MDE_PAPER,), ("mag-edit", "p2p")

    missing = "mde-edit needs regions: --region WORD=MASK.png for objects, --attribute WORD=MASK.png"

    @classmethod
    def check_given(cls, given) -> None:
        super().check_given(given)
        if not given & {"regions", "attributes"}:
            raise MaskError(cls.missing)

    @classmethod
    def check_text(cls, text, request, options) -> None:
        check_p2p(text, request, options.p2p)
        check_region_words(text, request.target, [r.word for r in request.regions])
        check_region_words(text, request.target, [r.word for r in request.attributes], "attribute")

    @classmethod
    def check(cls, bundle, request, options) -> None:
        if not request.regions and not request.attributes:
            raise MaskError(cls.missing)
        cls.check_text(bundle, request, options)
        check_alignment(bundle, request, options.p2p)
        check_regions(bundle, request.target, request.regions)
        check_regions(bundle, request.target, request.attributes, "attribute")
        check_map_masks(bundle, request.attributes, "attribute")  # CCL's ratio, as MAG-Edit's

    @classmethod
    def build(cls, bundle, request, options) -> Plan:
        import torch

        from ..attention import Chain
        from ..guidance import losses as L
        from ..guidance.loop import LatentGuidance, MapCapture, latent_mask_from, map_mask_from
        from ..masks import dilate

        objects, attributes = list(request.regions), list(request.attributes)
        obj_tokens = check_regions(bundle, request.target, objects)
        attr_tokens = check_regions(bundle, request.target, attributes, "attribute")
        side = bundle.image_size // bundle.vae_scale
        obj_latent = (latent_mask_from(torch.cat([r.mask for r in objects]), (side, side)).to(bundle.device)
                      if objects else None)
        attr_latent = (latent_mask_from(torch.cat([r.mask for r in attributes]), (side, side)).to(bundle.device)
                       if attributes else None)
        parts = [m for m in (dilate(obj_latent, options.dilate) if obj_latent is not None else None, attr_latent)
                 if m is not None]
        update = torch.stack(parts).amax(0)  # Eq. 8's M: the union (objects dilated, as the code)
        # the final blend: the union of all masks, each dilated once (the code's max-pooled masks)
        union = torch.stack([m for m in (obj_latent, attr_latent) if m is not None]).amax(0)
        engine, level = guided_p2p(bundle, request, options.p2p, options.blend_last, dilate(union, options.dilate))
        s = map_side(bundle, level)
        quartic = options.oal_form == "quartic"
        own = MapCapture(level, scores=quartic)  # before the engine: the target's own maps (OAL)
        injected = MapCapture(level)  # after the engine: A_hat (CCL)
        if quartic:
            oal_targets = torch.stack([map_mask_from(r.mask, 2 * s) for r in objects]).to(bundle.device) if objects else None
        else:
            oal_targets = torch.stack([map_mask_from(r.mask, s) for r in objects]).to(bundle.device) if objects else None
        ccl_masks = [map_mask_from(r.mask, s, "nearest").to(bundle.device) for r in attributes]

        def loss(own_cap, inj_cap):
            total = 0.0
            if objects:
                if quartic:
                    maps = quartic_maps(own_cap.records, obj_tokens, s)
                    total = total + options.lambda_oal * L.quartic_alignment_loss(maps, oal_targets, options.oal_smoothing)
                else:
                    maps = torch.stack([own_cap.word_map(t) for t in obj_tokens])
                    total = total + options.lambda_oal * L.object_alignment_loss(maps, oal_targets)
            if attributes:
                ccl = 0.0
                for tokens, m in zip(attr_tokens, ccl_masks):
                    if options.ccl_form == "token-ratio":
                        ccl = ccl + L.token_ratio_loss(inj_cap.records, tokens, m)
                    else:
                        ccl = ccl + L.spatial_ratio_loss(inj_cap.records, tokens, m, 3.0)
                total = total + options.lambda_ccl * ccl / len(ccl_masks)
            return total

        guide = LatentGuidance(options.guidance, (own, injected), loss, update)
        return Plan(Chain([own, engine, injected]), (guide,))
