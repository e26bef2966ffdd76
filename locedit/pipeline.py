"""invert -> control -> decode: the one module that knows every family.

All functions take and return tensors: images (1, 3, H, W) float in [0, 1] at the model's size,
latents (B, C, h, w) float32, masks (1, 1, H, W) in [0, 1].
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

import torch

from .attention import AttentionController, BatchLayout, controlled_attention, map_level, unet_sites
from .control import ENGINES, P2POptions, check_blend_words
from .diffusion import ModelBundle, ddim_step
from .errors import LoceditError, OptimisationError, PromptError
from .inversion import INVERSIONS, Trajectory
from .masks import check_mask, dilate, to_latent_mask
from .progress import Progress, track


@dataclass(frozen=True)
class EditOptions:
    """Sampling-side options shared by every engine.

    The last three are the editing-side extras the SPDInv authors' P2P code uses and the paper does
    not mention; each is off by default so its effect can be measured apart from the inversion:
    ``npi_null``: the source prompt's embedding replaces the null embedding (as NPI);
    ``proximal_quantile``: soft-threshold the guidance difference eps_c - eps_u at this quantile of
    its magnitude (their "l0" proximal guidance, 0.7);
    ``inversion_guidance_t``: for timesteps below this (400), latents where the thresholded guidance
    is zero (3x3-dilated complement) are pulled onto the inversion trajectory (needs the proximal
    threshold).
    """

    guidance: float = 7.5
    npi_null: bool = False
    proximal_quantile: float | None = None
    inversion_guidance_t: int | None = None

    def __post_init__(self):
        if self.guidance < 0:
            raise LoceditError(f"guidance must be >= 0, got {self.guidance}")
        if self.proximal_quantile is not None and not 0.0 < self.proximal_quantile < 1.0:
            raise LoceditError(f"proximal_quantile must be in (0, 1), got {self.proximal_quantile}")
        if self.inversion_guidance_t is not None and self.proximal_quantile is None:
            raise LoceditError("inversion guidance needs the proximal threshold (set proximal_quantile)")


@dataclass
class SampleResult:
    latents: torch.Tensor  # (branches, C, h, w)
    unet_calls: int
    seconds: float
    blend_mask: torch.Tensor | None = None  # (1, 1, h, w) last local-blend mask, if any


def learned_conds(bundle: ModelBundle, traj: Trajectory, prompts: list[str], step: int) -> torch.Tensor:
    """(len(prompts), L, D): each prompt encoded with the trajectory's learned token vectors of
    step ``step`` at the positions of their words (a word absent from a prompt is left alone)."""
    from .diffusion.text import token_positions
    from .errors import PromptError as _Missing

    out = []
    for p in prompts:
        vectors = {}
        for word, vec in traj.token_vectors.items():
            try:
                positions = token_positions(bundle.tokenizer, p, word)
            except _Missing:
                continue
            per_step = vec[step].to(bundle.device)  # (tokens of the word, D_in)
            for k, pos in enumerate(positions):
                vectors[pos] = per_step[k % per_step.shape[0]]
        with torch.no_grad():
            out.append(bundle.encode_text_with_tokens(p, vectors) if vectors else bundle.encode_text([p]))
    return torch.cat(out)


def uncond_embedding(bundle: ModelBundle, traj: Trajectory, step: int, options: EditOptions,
                     source_embed: torch.Tensor, null_embed: torch.Tensor) -> torch.Tensor:
    if options.npi_null or traj.uncond == "source":
        return source_embed
    if traj.uncond == "learned":
        return traj.null_embeddings[step].to(source_embed)
    return null_embed


def soft_threshold(delta: torch.Tensor, quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Proximal operator of the SPDInv code's "l0" guidance: shrink |delta| by its ``quantile``."""
    thr = delta.abs().float().flatten().quantile(quantile)
    return delta - delta.clamp(-thr, thr), thr


def sample(bundle: ModelBundle, traj: Trajectory, prompts: list[str], options: EditOptions = EditOptions(),
           controller: AttentionController | None = None, progress: Progress | None = None,
           guide=None) -> SampleResult:
    """Denoise from ``traj.noise`` with one branch per prompt, CFG batch [uncond..., cond...].

    ``guide`` (optional): a latent-guidance hook called before each step as
    ``guide(bundle, controller, step, t, alpha, z, conds) -> z`` (see
    :class:`locedit.guidance.LatentGuidance`).

    ``prompts[0]`` is the source branch (pinned to the trajectory when ``traj.source_follows``);
    ``prompts[1]``, when given, the target. The controller is installed on the UNet for the whole
    loop and restored after it, even on error.
    """
    start_calls, t0 = bundle.unet_calls, time.perf_counter()
    n = traj.num_steps
    sched = bundle.schedule(n)
    branches = ("source", "target")[: len(prompts)]
    embeds = bundle.encode_text(list(prompts) + [""])
    conds, null_embed = embeds[:-1], embeds[-1:]
    source_embed = embeds[:1]
    z = traj.noise.to(bundle.device).expand(len(prompts), -1, -1, -1).clone()
    ctrl = controller or AttentionController()
    if ctrl.layout is None:
        ctrl.layout = BatchLayout.cfg(branches)
    ctrl.clock.num_steps = n
    with controlled_attention(bundle.unet, ctrl) if controller is not None else contextlib.nullcontext():
        for i in track(progress, range(n), "editing" if len(prompts) > 1 else "sampling"):
            t, a, a_next = sched.timesteps[i], sched.alphas[i], sched.alphas_next[i]
            if traj.token_vectors:
                conds = learned_conds(bundle, traj, prompts, i)
            if guide is not None:
                z = guide(bundle, ctrl, i, t, a, z, conds)
            ctrl.clock.set(i, t, "sample")
            unc = uncond_embedding(bundle, traj, i, options, source_embed, null_embed)
            batch_embeds = torch.cat([unc.expand(len(prompts), -1, -1), conds])
            with torch.no_grad():
                eps = bundle.predict_eps(torch.cat([z, z]), t, a, batch_embeds)
            eps_u, eps_c = eps.chunk(2)
            delta = eps_c - eps_u
            thr = None
            if options.proximal_quantile is not None:
                delta, thr = soft_threshold(delta, options.proximal_quantile)
            z_next = ddim_step(z, eps_u + options.guidance * delta, a, a_next)
            target = traj.target_latent(i).to(z_next)
            if options.inversion_guidance_t is not None and t < options.inversion_guidance_t:
                edited = dilate((delta.abs() > thr).float(), 1).amax(dim=1, keepdim=True)
                z_next = z_next - (z_next - target) * (1 - edited)
            if traj.source_follows:  # direct inversion: add back the recorded difference
                offset = target - z_next[0:1]
                z_next = torch.cat([z_next[0:1] + offset, z_next[1:]])
            z = ctrl.after_step(z_next)
    blend = getattr(ctrl, "last_blend_mask", None)
    return SampleResult(z, bundle.unet_calls - start_calls, time.perf_counter() - t0, blend)


@torch.no_grad()
def generate(bundle: ModelBundle, prompts: list[str], num_steps: int = 50, guidance: float = 7.5,
             generator: torch.Generator | None = None, progress: Progress | None = None) -> torch.Tensor:
    """Text-to-image DDIM sampling with CFG from seeded noise; returns latents (B, C, h, w)."""
    sched = bundle.schedule(num_steps)
    embeds = bundle.encode_text(list(prompts) + [""])
    cond, null = embeds[:-1], embeds[-1:]
    b = len(prompts)
    side = bundle.unet.config.sample_size
    z = torch.randn((b, bundle.unet.config.out_channels, side, side), generator=generator).to(bundle.device)
    batch_embeds = torch.cat([null.expand(b, -1, -1), cond])
    for i in track(progress, range(num_steps), "generating"):
        t, a, a_next = sched.timesteps[i], sched.alphas[i], sched.alphas_next[i]
        eps_u, eps_c = bundle.predict_eps(torch.cat([z, z]), t, a, batch_embeds).chunk(2)
        z = ddim_step(z, eps_u + guidance * (eps_c - eps_u), a, a_next)
    return z


def invert(bundle: ModelBundle, image: torch.Tensor, prompt: str, method: str = "null-text", num_steps: int = 50,
           guidance: float = 7.5, options=None, progress: Progress | None = None) -> Trajectory:
    """Encode ``image`` (1, 3, S, S) and invert it with a method from :data:`INVERSIONS`."""
    if method not in INVERSIONS:
        raise LoceditError(f"unknown inversion {method!r}; choose one of {', '.join(INVERSIONS)}")
    opt_cls, fn = INVERSIONS[method]
    options = options if options is not None else opt_cls()
    bundle.token_ids(prompt)
    start, t0 = bundle.unet_calls, time.perf_counter()
    z0 = bundle.encode_image(image)
    traj = fn(bundle, z0, prompt, num_steps, guidance, options, progress)
    traj.model = bundle.name
    traj.stats.update(unet_calls=bundle.unet_calls - start, seconds=time.perf_counter() - t0)
    return traj


def reconstruct(bundle: ModelBundle, traj: Trajectory, options: EditOptions = EditOptions(),
                progress: Progress | None = None) -> SampleResult:
    """Sample the source prompt alone from the trajectory's noise."""
    return sample(bundle, traj, [traj.prompt], options, None, progress)


def make_controller(bundle: ModelBundle, engine: str, engine_options, source: str, target: str, num_steps: int,
                    mask: torch.Tensor | None = None):
    """Build the engine's controller; ``mask`` (1, 1, S, S) is the user's blend mask at model size."""
    if engine not in ENGINES:
        raise LoceditError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    opt_cls, ctrl_cls = ENGINES[engine]
    engine_options = engine_options if engine_options is not None else opt_cls()
    latent_mask = None
    if mask is not None:
        mask = check_mask(mask, (bundle.image_size, bundle.image_size))
        side = bundle.image_size // bundle.vae_scale
        latent_mask = to_latent_mask(mask, (side, side)).to(bundle.device)
    level = map_level(unet_sites(bundle.unet))
    return ctrl_cls(engine_options, bundle.tokenizer, source, target, num_steps, level, user_mask=latent_mask)


@dataclass
class EditResult:
    source: torch.Tensor  # (1, 3, S, S) reconstruction of the source branch
    edited: torch.Tensor  # (1, 3, S, S)
    trajectory: Trajectory
    sample: SampleResult
    stats: dict = field(default_factory=dict)


def check_prompts(bundle: ModelBundle, source: str, target: str, engine_options) -> None:
    """Every prompt-level check that can fail, before the first UNet call."""
    bundle.token_ids(source)
    bundle.token_ids(target)
    if engine_options is None:  # guidance methods run P2P refine, which any prompt pair supports
        return
    if isinstance(engine_options, P2POptions):
        if engine_options.mode == "replace":
            from .control import replace_mapping

            replace_mapping(bundle.tokenizer(source).input_ids, bundle.tokenizer(target).input_ids, bundle.max_tokens)
        check_blend_words(bundle.tokenizer, source, target, engine_options.blend_words)
        from .diffusion.text import token_positions

        for word, _ in engine_options.reweight:
            token_positions(bundle.tokenizer, target, word)


EDIT_METHODS = ("p2p", "mag-edit", "mde-edit", "locinv")


class AttentionRecorder(AttentionController):
    """Accumulates the target's conditional maps of chosen words over the sampling steps
    (for ``--save-attention``); only those tokens, at the map level, are kept."""

    def __init__(self, bundle: ModelBundle, target: str, words: list[str]):
        from .attention import MapRequest, TokenMapStore
        from .diffusion.text import token_positions

        super().__init__()
        self.words = list(words)
        self.level = map_level(unet_sites(bundle.unet))
        self._requests = {w: tuple(token_positions(bundle.tokenizer, target, w)) for w in self.words}
        self.store = None
        self._make = lambda row: TokenMapStore({w: MapRequest(row, t) for w, t in self._requests.items()})

    def wants(self, site) -> bool:
        return (self.clock.phase == "sample" and site.kind == "cross" and site.level == self.level
                and site.place != "mid")

    def edit_probs(self, probs, site):
        if self.store is None:
            self.store = self._make(self.layout.index("target", "cond"))
        self.store.add(probs, site)
        return probs

    def after_step(self, latents):
        if self.store is not None:
            self.store.start_step()
        return latents

    def maps(self) -> dict[str, torch.Tensor]:
        """word -> (side, side) map, summed over the word's tokens, averaged over steps."""
        return {w: self.store.maps(w).sum(0) / max(1, len(self.store._steps)) for w in self.words}


def edit(bundle: ModelBundle, image: torch.Tensor | None, source: str, target: str, *,
         inversion: str = "null-text", inversion_options=None, trajectory: Trajectory | None = None,
         method: str = "p2p", engine: str = "p2p", engine_options=None, mask: torch.Tensor | None = None,
         regions=(), attributes=(), pairs=(), method_options=None, record_words: tuple[str, ...] = (),
         num_steps: int = 50, options: EditOptions = EditOptions(), progress: Progress | None = None) -> EditResult:
    """Invert ``image`` (or reuse ``trajectory``) under ``source`` and edit it towards ``target``.

    ``method``: "p2p" (the engine alone, optional blend ``mask``), "mag-edit" (``regions``),
    "mde-edit" (``regions`` = objects, ``attributes``), "locinv" (``regions`` = nouns of the source
    prompt with their priors, ``pairs`` = (adjective, noun) bindings; its own inversion, then the
    engine with the learned tokens); ``regions`` are
    :class:`locedit.guidance.Region` with masks at the model's image size. ``record_words``:
    target words whose accumulated maps are returned in ``stats["attention"]``.
    """
    from .guidance import MAGEditOptions, MDEEditOptions, mag_edit, mde_edit

    if method not in EDIT_METHODS:
        raise LoceditError(f"unknown method {method!r}; choose one of {', '.join(EDIT_METHODS)}")
    if engine_options is None:
        engine_options = ENGINES[engine][0]() if engine in ENGINES else None
    check_prompts(bundle, source, target, engine_options if method in ("p2p", "locinv") else None)
    steps = trajectory.num_steps if trajectory is not None else num_steps
    guide = None
    if method == "locinv":
        from .guidance.locinv import LocInvOptions, locinv_inversion

        controller = make_controller(bundle, engine, engine_options, source, target, steps, mask)
        if trajectory is None:
            if image is None:
                raise LoceditError("edit needs an image or a trajectory")
            trajectory = locinv_inversion(bundle, bundle.encode_image(image), source, list(regions), num_steps,
                                          options.guidance, list(pairs), method_options or LocInvOptions(), progress)
    elif method == "p2p":
        controller = make_controller(bundle, engine, engine_options, source, target, steps, mask)
    elif method == "mag-edit":
        controller, guide = mag_edit(bundle, source, target, list(regions), steps, method_options or MAGEditOptions())
    else:
        controller, guide = mde_edit(bundle, source, target, list(regions), list(attributes), steps,
                                     method_options or MDEEditOptions())
    recorder = AttentionRecorder(bundle, target, list(record_words)) if record_words else None
    if recorder is not None:
        from .guidance import Chain

        controller = Chain([controller, recorder])
    if trajectory is None:
        if image is None:
            raise LoceditError("edit needs an image or a trajectory")
        trajectory = invert(bundle, image, source, inversion, num_steps, options.guidance, inversion_options, progress)
    elif trajectory.prompt != source:
        raise PromptError(f"the trajectory was inverted with prompt {trajectory.prompt!r}, not {source!r}")
    result = sample(bundle, trajectory, [source, target], options, controller, progress, guide)
    if not torch.isfinite(result.latents).all():
        raise OptimisationError("the edit produced NaN or inf latents (corrupt weights, or fp16 overflow: try --dtype fp32)")
    images = bundle.decode_latents(result.latents)
    stats = {
        "inversion_unet_calls": trajectory.stats.get("unet_calls", 0),
        "inversion_seconds": trajectory.stats.get("seconds", 0.0),
        "edit_unet_calls": result.unet_calls,
        "edit_seconds": result.seconds,
    }
    if guide is not None:
        stats["guidance_loss"] = guide.history
    if recorder is not None and recorder.store is not None:
        stats["attention"] = recorder.maps()
    return EditResult(images[0:1], images[1:2], trajectory, result, stats)
