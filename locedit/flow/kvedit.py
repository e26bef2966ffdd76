"""KV-Edit (Zhu et al., "KV-Edit: Training-Free Image Editing for Precise Background Preservation",
2025): the user's mask splits FLUX's image tokens into foreground and background; the inversion
caches every block's background keys and values, and the edit runs the transformer on the
foreground tokens alone, attending to the cached background, so the background's latent is the
source's exactly and only the foreground is regenerated.

Read from the authors' code (Xilluill/KV-Edit: ``models/kv_edit.py`` ``Flux_kv_edit`` and
``Flux_kv_edit_inf``, ``flux/sampling.py`` ``denoise_kv`` / ``denoise_kv_inf``,
``flux/modules/layers.py`` ``DoubleStreamBlock_kv`` / ``SingleStreamBlock_kv``,
``gradio_kv_edit.py`` for the defaults):

- the mask is taken to the latent grid bilinearly and every value above 0 becomes 1
  (:func:`latent_mask`); a packed token is foreground when any of its 2x2 latent pixels is;
- the schedule is FLUX's with ``steps``, its first ``skip`` levels dropped; the inversion is Euler at
  distilled guidance ``inversion_guidance`` with the source prompt, caching each block's image keys
  (after the RMS norm, before the rotary embedding) and values, and the latent before each step;
- sampling step k (from t_k to t_{k+1}) runs the target prompt at ``guidance`` on the foreground
  tokens, whose queries take their own positions' rotary embedding; the keys and values are the
  cache of the inversion step that ended at t_k (computed at t_{k+1}) with the foreground's replaced
  by the current ones; the foreground's latent entries outside the pixel mask are reset to the
  cached latent first; it starts from the cached latent of the top step (the inversion's latent
  *before* its last step, at t_1: the code's choice, kept), or with ``re_init`` from the source noised
  to t_0 with a fresh draw;
- ``attn_scale`` adds that constant to the attention logits of every background key while sampling
  (1 in the demo); ``attn_mask`` masks attention during the inversion so that background and
  foreground image tokens do not see each other (text tokens see every token: the code means them to
  see text and background only, but its first row assignment opens whole rows; kept as it runs);
- ``inversion_free``: the code's second editor, FlowEdit's ODE (Kulikov et al., Alg. 1) on the
  foreground tokens, the source branch on the whole image caching keys and values that the target
  branch attends to; its noise is one draw reused at every step (the code seeds 0 at each step).

Defaults: the demo's (``gradio_kv_edit.py``): 28 steps, skip 4, inversion guidance 1.5, guidance 5.5,
attn_scale 1, re_init and attn_mask off. The paper's text is not at hand here; only the code's
reading is offered. Every background token ends on the source latent exactly (tested).

``solver`` (locedit's addition, in neither paper nor code; default ``euler``, the code's): the
inversion and the sampling by RF-Solver's second-order step (:func:`locedit.diffusion.flow.walk`),
two calls a step; the midpoint call of sampling step k replays the keys and values of the inversion
step paired with it, whose midpoint is the same level, as the first calls pair as above. FireFlow's
and Uni-Inv's reused velocities leave the first sampling call without a recorded partner, so they
are not offered.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion import flow
from ..errors import LoceditError
from .attention import JointControl, controlled
from .options import KVEditOptions




def latent_mask(mask: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The code's rule: a (1, 1, H, W) mask taken bilinearly to the (h, w) latent grid, every value
    above 0 set to 1."""
    m = F.interpolate(mask.float(), size=(h, w), mode="bilinear", align_corners=False)
    return (m > 0).float()


class KVCache(JointControl):
    """Records the image tokens' keys and values of every block (``record``), or splices the current
    foreground's into the recorded ones (``replay``) with the full sequence's rotary embedding for the
    keys and an additive logit bias on the background keys. The cache lives in CPU memory, as the
    authors' code keeps it (``.cpu()``): at 1024 px on FLUX.1-dev it is 2 x 4096 x 3072 values per
    block and step, 57 blocks, 24 steps - 69 GB in bf16, far beyond any accelerator's memory."""

    def __init__(self, text_len: int, fg: torch.Tensor, full_rotary, bias=None, inversion_mask=None):
        super().__init__(text_len)
        self.fg, self.full_rotary, self.bias, self.inversion_mask = fg, full_rotary, bias, inversion_mask
        self.mode = "record"
        self.cache: dict = {}

    def attend(self, site, q, k, v, rotary, mask):
        t = self.text_len
        key = (self.clock, site)
        if self.mode == "record":
            self.cache[key] = (k[:, t:].detach().to("cpu"), v[:, t:].detach().to("cpu"))  # as the code: CPU RAM
            return q, k, v, rotary, rotary, self.inversion_mask
        k_img, v_img = (c.clone().to(k) for c in self.cache[key])
        k_img[:, self.fg], v_img[:, self.fg] = k[:, t:], v[:, t:]
        k, v = torch.cat([k[:, :t], k_img], dim=1), torch.cat([v[:, :t], v_img], dim=1)
        return q, k, v, rotary, self.full_rotary, self.bias


def _inversion_mask(text_len: int, fg: torch.Tensor) -> torch.Tensor:
    """(1, 1, S, S) boolean, the code's ``create_attention_mask`` as it executes: text rows attend to
    everything (its first assignment indexes whole rows, so the text-to-background line after it
    changes nothing); foreground rows to text and foreground; background rows to text and
    background."""
    is_fg = torch.cat([torch.zeros(text_len, dtype=torch.bool), fg])
    is_bg = torch.cat([torch.zeros(text_len, dtype=torch.bool), ~fg])
    text = ~(is_fg | is_bg)
    rows = torch.where(is_fg[:, None], (text | is_fg)[None, :], (text | is_bg)[None, :])
    rows[:text_len] = True
    return rows[None, None]


def _inversion_free(bundle, control, tokens, ids, idx, mm, levels, src, tar, o, noise, steps):
    """The code's ``Flux_kv_edit_inf``: FlowEdit's ODE on the foreground tokens ``idx``, the source branch
    over the whole image recording the keys and values its target branch replays; one ``noise`` draw
    at every step. Returns the foreground tokens' edited latent."""
    z_fe = tokens[:, idx]
    for k in steps:
        t = levels[k]
        z_src = (1 - t) * tokens + t * noise
        z_tar = z_src[:, idx] - tokens[:, idx] + z_fe
        control.clock, control.mode = (k, "first"), "record"
        v_src = bundle.velocity_tokens(z_src, ids, t, src, o.inversion_guidance)
        control.mode = "replay"
        v_tar = bundle.velocity_tokens(z_tar, ids[idx], t, tar, o.guidance)
        z_fe = z_fe + (levels[k + 1] - t) * (v_tar - v_src[:, idx]) * mm
    return z_fe


@torch.no_grad()
def kv_edit(bundle, x_src: torch.Tensor, source: str, target: str, options: KVEditOptions = KVEditOptions(),
            seed: int = 0, progress=None, mask: torch.Tensor | None = None) -> torch.Tensor:
    """The edited latent (1, C, h, w) of ``x_src`` on a FLUX model; ``mask`` (1, 1, h, w) on the latent
    grid (values above 0 count; :func:`latent_mask` takes an image-size mask there) is required."""
    from ..progress import track

    if bundle.family != "flux":
        raise LoceditError(f"kv-edit runs on FLUX models (its caches are FLUX's blocks'), not {bundle.family}")
    if mask is None:
        raise LoceditError("kv-edit needs a mask (--mask, or --blend-words)")
    o = options
    _, c, h, w = x_src.shape
    x = x_src.to(bundle.device, bundle.dtype)
    tokens = flow.pack(x)
    token_mask = flow.pack((mask.to(x) > 0).to(x).expand(1, c, h, w))
    fg = token_mask.sum(-1)[0] > 0.5
    if not fg.any():
        raise LoceditError("kv-edit's mask covers no latent token: nothing to edit")
    idx = fg.nonzero()[:, 0].to(x.device)
    mm = token_mask[:, idx]
    ids = flow.image_ids(h // 2, w // 2).to(x.device, x.dtype)
    levels = bundle.sigmas(o.steps, h, w).tolist()[o.skip:]
    n = len(levels) - 1
    src, tar = bundle.encode_text([source]), bundle.encode_text([target])
    text_len = src.states.shape[1]
    bias = None
    if o.attn_scale != 0 and not fg.all():
        bias = torch.zeros(1, 1, 1, text_len + fg.numel(), dtype=x.dtype, device=x.device)
        bias[..., text_len:][..., ~fg.to(x.device)] = o.attn_scale
    control = KVCache(text_len, idx, bundle.rotary(src, ids), bias,
                      _inversion_mask(text_len, fg.cpu()).to(x.device) if o.attn_mask and not fg.all() else None)
    gen = torch.Generator().manual_seed(seed)
    out = tokens.clone()
    with controlled(bundle.transformer, control):
        if o.inversion_free:
            noise = torch.randn(tokens.shape, generator=gen).to(x)
            out[:, idx] = _inversion_free(bundle, control, tokens, ids, idx, mm, levels, src, tar, o, noise,
                                          track(progress, range(n), "kv-edit"))
            return flow.unpack(out, h, w)
        ticks = iter(track(progress, range(2 * n), "kv-edit"))
        before = {n - 1: tokens}  # the latent before inversion step i, keyed by its sampling step n - 1 - i

        def keep(i, z):
            if i < n - 1:
                before[n - 2 - i] = z
            next(ticks, None)
            return z

        def inversion_clock(i, stage):  # inversion step i is paired with sampling step n - 1 - i
            control.clock = (n - 1 - i, stage)

        control.mode = "record"
        flow.walk(lambda z, t: bundle.velocity_tokens(z, ids, t, src, o.inversion_guidance), tokens, levels[::-1],
                  o.solver, clock=inversion_clock, after_step=keep)
        if o.re_init:
            noise = torch.randn(tokens.shape, generator=gen).to(x)
            z_fg = (tokens * (1 - levels[0]) + noise * levels[0])[:, idx]
        else:
            z_fg = before[0][:, idx]

        def blend(k, z):  # before sampling step k + 1: the foreground's entries outside the mask reset
            next(ticks, None)
            return before[k + 1][:, idx] * (1 - mm) + z * mm if k + 1 < n else z

        def sampling_clock(k, stage):
            control.clock = (k, stage)

        control.mode = "replay"
        z_fg, _ = flow.walk(lambda z, t: bundle.velocity_tokens(z, ids[idx], t, tar, o.guidance),
                            before[0][:, idx] * (1 - mm) + z_fg * mm, levels, o.solver, clock=sampling_clock,
                            after_step=blend)
    out[:, idx] = tokens[:, idx] * (1 - mm) + z_fg * mm
    return flow.unpack(out, h, w)
