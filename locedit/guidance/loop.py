"""Latent guidance inside masks: the loop MAG-Edit and MDE-Edit are configurations of.

For the first ``guided_steps`` sampling steps, before the ordinary CFG step, the target latent is
updated ``iterations`` times (MAG-Edit Alg. 1, Eq. 4-5; MDE-Edit Eq. 8):

    z*_t <- z*_t - M (.) delta * s_t * grad_z L(A_hat)

where A_hat are the target's cross-attention maps at the map level (SD: the 16x16 layers) after
the engine's injection, computed by a UNet call on [source, target] without CFG (after the first
iteration of a step, on the target alone with the source's attention replayed: :class:`SourceReplay`);
s_t = sqrt((1 - abar_t) / abar_t) when ``sigma_scaling`` (the MAG-Edit code's choice) else 1;
M is the union of the edit masks at latent resolution. The source latent is never changed, and
latents outside M are untouched by the update.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from ..attention import AttentionController, BatchLayout, Chain, Site, controlled_attention  # noqa: F401 (Chain: re-exported)
from ..errors import OptimisationError
from ..events import StepState, Subscriber
from .options import GuidanceOptions  # noqa: F401 (re-exported)


class MapCapture(AttentionController):
    """During the "guide" phase, keeps one branch's cross-attention probabilities at the map-level
    sites (down and up blocks), with their gradient: one (heads, P, K) tensor per site and UNet
    call, for that row only. ``scores=True`` keeps the pre-softmax logits instead (MDE-Edit's code
    builds its OAL maps from resized logits)."""

    def __init__(self, map_level: int, branch: str = "target", scores: bool = False):
        super().__init__()
        self.map_level = map_level
        self.branch = branch
        self.scores = scores
        self.records: list[torch.Tensor] | None = None
        self.on_record: Callable[[], None] | None = None  # :class:`MapsOnly` stops the forward here

    def _record(self, x: torch.Tensor) -> None:
        self.records.append(x)
        if self.on_record is not None:
            self.on_record()

    def begin(self) -> None:
        self.records = []

    def end(self) -> None:
        self.records = None

    def wants(self, site: Site) -> bool:
        return (self.clock.phase == "guide" and self.records is not None and site.kind == "cross"
                and site.level == self.map_level and site.place != "mid")

    def rewrites_scores(self, site: Site) -> bool:
        return self.scores

    def edit_scores(self, scores, site):
        self._record(scores[self.layout.index(self.branch, "cond")])  # (heads, P, K)
        return scores

    def edit_probs(self, probs, site):
        if not self.scores:
            self._record(probs[self.layout.index(self.branch, "cond")])  # (heads, P, K)
        return probs

    def token_maps(self, tokens: list[int]) -> torch.Tensor:
        """(T, P): each token's map, averaged over heads and the recorded sites."""
        return torch.stack([r[..., tokens].mean(0) for r in self.records]).mean(0).transpose(0, 1)

    def word_map(self, tokens: list[int]) -> torch.Tensor:
        """(P,): the word's map, its tokens' maps summed."""
        return self.token_maps(tokens).sum(0)


class _MapsComplete(Exception):
    """Raised inside a UNet forward once every capture holds its maps (see :class:`MapsOnly`)."""


class MapsOnly:
    """Runs loss-only UNet forwards up to the last site whose maps the loss reads, and no further.

    The guidance and token-learning losses (MAG-Edit Eq. 3-4, MDE-Edit's OAL/CCL, LocInv Eq. 5-8)
    read the cross-attention maps of the map-level sites and never the noise prediction, so the
    layers after the last such site (at SD's 16x16 level: the 32x32 and 64x64 up blocks, where
    self-attention is widest, and the output convolution) do nothing for them; their gradient was
    already zero. The first forward runs whole and counts each capture's records; every later one
    stops, by an exception raised from the capture's hook, when all captures hold that many (the
    counts can be handed on to the next instance on the same captures). The losses, gradients and
    updates are the same tensors (tested); the authors' code runs the whole UNet. Off under gradient checkpointing (its backward re-runs blocks whole) and with
    ``enabled=False``. A stopped forward still counts as a UNet call in ``bundle.unet_calls``.
    """

    def __init__(self, captures: tuple[MapCapture, ...], enabled: bool = True, counts: list[int] | None = None):
        self.captures = captures
        self.enabled = enabled
        self.counts = counts  # records per whole forward; None: counted on the first
        self.armed = False
        for c in captures:
            c.on_record = self._recorded

    def _recorded(self) -> None:
        if self.armed and all(len(c.records) >= n for c, n in zip(self.captures, self.counts)):
            raise _MapsComplete

    def run(self, bundle, forward: Callable[[], object]) -> None:
        """Call ``forward`` (a UNet call whose output is not used) with the early stop armed."""
        if not self.enabled or getattr(bundle.unet, "is_gradient_checkpointing", False):
            forward()
            return
        if self.counts is None:
            forward()
            self.counts = [len(c.records) for c in self.captures]
            return
        self.armed = True
        try:
            forward()
        except _MapsComplete:
            pass
        finally:
            self.armed = False

    def close(self) -> list[int] | None:
        """Detach from the captures; returns the counts, for the next :class:`MapsOnly` on them."""
        for c in self.captures:
            c.on_record = None
        return self.counts


class SourceReplay(AttentionController):
    """Runs a [source, target] controller on target-only UNet calls by replaying the source row.

    Within one guided step the source latent, the timestep and the prompts are fixed, and nothing
    in the source row depends on the target's (the engines inject source into target, never back),
    so what the controller is handed for the source row at each site - queries, keys and values,
    logits, probabilities - is the same at every iteration. The first call (``replay`` False) runs
    [source, target] and keeps the source row of each; later calls (``replay`` True) run the target
    alone and hand the controller [kept source row, target row], so it computes what it would on the
    full batch, and only the target row goes on. The same arithmetic up to float rounding (kernels
    may round differently at another batch size); the forward and backward passes are half as wide.
    The authors' MAG-Edit code likewise backpropagates a target-only graph after a source call.
    """

    def __init__(self, inner: AttentionController):
        super().__init__(inner.clock, BatchLayout.single(("source", "target")))
        self.inner = inner
        self.replay = False
        self.kept: dict[tuple[str, str], torch.Tensor] = {}

    def start_replay(self) -> None:
        self.replay = True
        self.layout = BatchLayout.single(("target",))

    def wants(self, site: Site) -> bool:
        return self.inner.wants(site)

    def rewrites_scores(self, site: Site) -> bool:
        return self.inner.rewrites_scores(site)

    def rewrites_qkv(self, site: Site) -> bool:
        return self.inner.rewrites_qkv(site)

    def _both(self, site: Site, what: str, x: torch.Tensor) -> torch.Tensor:
        key = (site.name, what)
        if self.replay:
            return torch.cat([self.kept[key], x])
        self.kept[key] = x[0:1].detach()
        return x

    def _target(self, x: torch.Tensor) -> torch.Tensor:
        return x[1:] if self.replay else x

    def edit_qkv(self, query, key, value, site):
        q, k, v = self.inner.edit_qkv(self._both(site, "q", query), self._both(site, "k", key),
                                      self._both(site, "v", value), site)
        return self._target(q), self._target(k), self._target(v)

    def edit_scores(self, scores, site):
        return self._target(self.inner.edit_scores(self._both(site, "scores", scores), site))

    def edit_probs(self, probs, site):
        return self._target(self.inner.edit_probs(self._both(site, "probs", probs), site))


# loss(*captures) -> scalar; built by each method from its words and masks
LossFn = Callable[..., torch.Tensor]


class LatentGuidance(Subscriber):
    """The sampling loop's subscriber that guides the target latent at the model input of each of the
    first ``guided_steps`` steps (:meth:`__call__`). ``latent_mask`` (1, 1, h, w) is M."""

    def __init__(self, options: GuidanceOptions, capture: MapCapture | tuple[MapCapture, ...], loss: LossFn,
                 latent_mask: torch.Tensor, replay_source: bool = True, maps_only: bool = True):
        self.options = options
        self.replay_source = replay_source  # False: every iteration on [source, target] (the reference)
        self.maps_only = maps_only  # False: every forward runs the whole UNet (the reference)
        self._map_counts: list[int] | None = None  # records per forward, counted on the first
        self.captures = capture if isinstance(capture, tuple) else (capture,)
        self.loss = loss
        self.latent_mask = latent_mask
        self.history: list[list[float]] = []  # loss per iteration, per guided step

    def model_input(self, state: StepState) -> None:
        state.z = self(state.bundle, state.controller, state.move, state.z, state.conds)

    def stats(self) -> dict:
        return {"guidance_loss": self.history}

    def __call__(self, bundle, controller: AttentionController, move, z: torch.Tensor,
                 conds: torch.Tensor) -> torch.Tensor:
        """Guide before sampling step ``move`` (a DDIM :class:`~locedit.diffusion.sampler.Step`): ``z``
        (2, C, h, w) = [source, target]; ``conds`` (2, L, D). Returns the new z."""
        opt = self.options
        step, t, alpha = move.index, move.t, move.at
        if step >= opt.guided_steps or opt.iterations == 0:
            return z
        scale = opt.step_size * (((1 - alpha) / alpha) ** 0.5 if opt.sigma_scaling else 1.0)
        mask = self.latent_mask.to(z)
        saved = controller.layout
        controller.layout = BatchLayout.single(("source", "target"))
        controller.clock.set(step, t, "guide")
        z_src, z_tgt = z[0:1], z[1:2].detach()
        losses = []
        # the engine's feature hooks (Plug-and-Play) see whole batches, not attention sites: no replay
        replay = SourceReplay(controller) if self.replay_source and not controller.feature_hooks(bundle.unet) else None
        # installed around the backward passes too: gradient checkpointing runs the blocks again there
        ctx = controlled_attention(bundle.unet, replay) if replay is not None else contextlib.nullcontext()
        maps = MapsOnly(self.captures, self.maps_only, self._map_counts)
        try:
            with ctx:
                for k in range(opt.iterations):
                    for c in self.captures:
                        c.begin()
                    z_tgt = z_tgt.requires_grad_(True)
                    with torch.enable_grad():
                        if replay is not None and replay.replay:
                            maps.run(bundle, lambda: bundle.predict(z_tgt, move, conds[1:2]))
                        else:
                            maps.run(bundle, lambda: bundle.predict(torch.cat([z_src, z_tgt]), move, conds))
                        loss = self.loss(*self.captures)
                        if not torch.isfinite(loss):
                            raise OptimisationError(f"latent guidance: loss became {loss.item()} at step {step}")
                        (grad,) = torch.autograd.grad(loss, z_tgt)
                    losses.append(loss.item())
                    z_tgt = (z_tgt - mask * scale * grad).detach()
                    if replay is not None:
                        replay.start_replay()
        finally:
            self._map_counts = maps.close()
            for c in self.captures:
                c.end()
            controller.layout = saved
            controller.clock.set(step, t, "sample")
        self.history.append(losses)
        return torch.cat([z_src, z_tgt])


def latent_mask_from(masks: torch.Tensor, latent_hw: tuple[int, int]) -> torch.Tensor:
    """Union of (K, 1, H, W) image masks as a binary (1, 1, h, w) latent mask, nearest-resized
    (the MAG-Edit and MDE-Edit code's ``interpolate(..., size=(64, 64)) != 0``)."""
    union = (masks.amax(dim=0, keepdim=True) > 0.5).float()
    return (F.interpolate(union, size=latent_hw, mode="nearest") > 0).float()


def map_mask_from(mask: torch.Tensor, side: int, mode: str = "area") -> torch.Tensor:
    """(1, 1, H, W) image mask -> (side*side,) mask at the map resolution: "area" averages (soft;
    MDE-Edit's OAL targets, LocInv's ``prior_resize="area"``), "nearest" samples and binarises
    (MAG-Edit's masks), "pil-nonzero" is :func:`pil_nonzero_resize` (LocInv's priors)."""
    if mode == "nearest":
        return (F.interpolate((mask > 0.5).float(), size=(side, side), mode="nearest") > 0).float().flatten()
    if mode == "pil-nonzero":
        return pil_nonzero_resize(mask, side).flatten()
    return F.adaptive_avg_pool2d(mask.float(), (side, side)).flatten()


def pil_nonzero_resize(mask: torch.Tensor, side: int) -> torch.Tensor:
    """(1, 1, H, W) mask in [0, 1] -> (1, 1, side, side) of 0/1: what LocInv's ``read_segfile``
    computes, ``np.asarray(Image.open(path).resize((16, 16))).astype(bool)``: Pillow's default
    resampling of an 8-bit image (bicubic, a = -0.5, widened by the scale factor), done as Pillow
    does it, the horizontal pass first with the result rounded to 8 bits, then the vertical; every
    pixel that is not 0 after that counts. A coarse map of the mask, dilated by the filter's reach."""
    x = (mask.float().clamp(0, 1) * 255).round()
    h, w = x.shape[-2:]
    x = F.interpolate(x, size=(h, side), mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)
    x = F.interpolate(x, size=(side, side), mode="bicubic", antialias=True, align_corners=False).round().clamp(0, 255)
    return (x > 0).float()
