"""invert -> control -> decode: the sampling loop, inversion and the edit entry point.

Methods come from the registry in :mod:`locedit.methods`; this module names none of them.

The core takes and returns tensors: images (1, 3, H, W) float in [0, 1], latents (B, C, h, w)
float32, masks (1, 1, H, W) in [0, 1]. :func:`invert` and :func:`edit` also take PIL images of any
size and fit them to the model's square (:class:`locedit.imaging.Fit`), and :func:`edit` fits its
result back.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field, replace

import torch

from .attention import AttentionController, BatchLayout, controlled_attention, map_level, unet_sites
from .diffusion import ModelBundle
from .diffusion.cfg import cfg
from .diffusion.flow_model import UNET_FAMILIES, check_family
from .errors import LoceditError, OptimisationError, PromptError
from .imaging import Fit
from .events import StepState, Subscriber, publish
from .inversion import INVERSIONS, Trajectory, uncond_of
from .options import EditOptions
from .inversion.editing import subscribers as trajectory_subscribers
from .masks import Region, dilate
from .progress import Progress, track
from .spec import DEFAULT_INVERSION  # the library's and the command line's one default


@dataclass
class SampleResult:
    latents: torch.Tensor  # (branches, C, h, w)
    unet_calls: int
    seconds: float
    blend_mask: torch.Tensor | None = None  # (1, 1, h, w) last local-blend mask, if any


def soft_threshold(delta: torch.Tensor, quantile: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Proximal operator of the SPDInv code's "l0" guidance: shrink |delta| by its ``quantile``
    (taken over every row of the batch, as their ``diffusion_step``)."""
    thr = delta.abs().float().flatten().quantile(quantile)
    return delta - delta.clamp(-thr, thr), thr


def inversion_guidance(z_next: torch.Tensor, target: torch.Tensor, delta: torch.Tensor, thr) -> torch.Tensor:
    """The SPDInv code's inversion guidance: where the thresholded guidance is zero (per latent
    channel, the complement of its 3x3 dilation), pull the latents fully onto the inversion latent."""
    edited = dilate((delta.abs() > thr).float(), 1)  # (B, C, h, w): per channel, as their mask_edit
    return z_next - (z_next - target) * (1 - edited)


class ProximalGuidance(Subscriber):
    """SPDInv's editing-side extras (:class:`EditOptions`): after the prediction the guidance
    difference is soft-thresholded at ``proximal_quantile``; after the step, below
    ``inversion_guidance_t``, the latents where it is zero are pulled onto the inversion."""

    reads_every_row = True

    def __init__(self, options: EditOptions):
        self.options = options

    def after_prediction(self, state: StepState) -> None:
        state.delta, state.threshold = soft_threshold(state.delta, self.options.proximal_quantile)

    def after_step(self, state: StepState) -> None:
        limit = self.options.inversion_guidance_t
        if limit is not None and state.t < limit:
            target = state.trajectory.target_latent(state.step).to(state.z_next)
            state.z_next = inversion_guidance(state.z_next, target, state.delta, state.threshold)


class SourceAsNullOption(Subscriber):
    """``npi_null``: the unconditional rows take the source prompt's embedding, whatever the inversion."""

    def model_input(self, state: StepState) -> None:
        state.uncond = state.source


class ControllerStep(Subscriber):
    """The attention controller's own end of step (P2P's local blend, map stores)."""

    def __init__(self, controller: AttentionController):
        self.controller = controller

    def after_step(self, state: StepState) -> None:
        state.z_next = self.controller.after_step(state.z_next)


def uncond_rows(branches: tuple[str, ...], controller: AttentionController | None, pinned: bool,
                unc: torch.Tensor, conds: torch.Tensor) -> tuple[str, ...]:
    """The branches whose unconditional row the UNet must evaluate at this step.

    The source's is left out when its noise prediction is known or unused and no controller reads
    or rewrites that row's attention (``controller.reads`` / ``writes``; None means any row):
    - known: its embedding equals the source's conditional one (negative-prompt inversion, the
      ``npi_null`` option) and no controller rewrites the source's conditional row, so both rows
      compute the same thing and the conditional prediction serves for both;
    - unused (``pinned``): a subscriber pins the source branch after the step (direct inversion,
      Plug-and-Play) and none reads the guidance of every row (the proximal threshold).
    The edit is unchanged; the UNet batch is one row smaller (3 instead of 4 for an edit).
    """
    if not branches or branches[0] != "source":
        return branches
    reads = frozenset() if controller is None else controller.reads
    writes = frozenset() if controller is None else controller.writes
    if reads is None or writes is None or ("source", "uncond") in reads | writes:
        return branches
    known = ("source", "cond") not in writes and torch.equal(unc[0], conds[0])
    return branches[1:] if pinned or known else branches


def sample(bundle: ModelBundle, traj: Trajectory, prompts: list[str], options: EditOptions = EditOptions(),
           controller: AttentionController | None = None, progress: Progress | None = None,
           subscribers: tuple[Subscriber, ...] = (), *, branches: tuple[str, ...] | None = None, first_step: int = 0,
           null_prompt: str = "") -> SampleResult:
    """Denoise from the trajectory with one branch per prompt, CFG batch [uncond..., cond...].

    ``branches`` names the prompts' branches, an ordered subset of ("source", "target"); by default
    ``prompts[0]`` is the source branch and ``prompts[1]`` (when given) the target. Sampling runs
    steps ``first_step`` .. N-1 from ``traj.latents[N - first_step]`` (``traj.noise`` when 0). The
    controller is installed on the UNet for the whole loop and restored after it, even on error.
    Each step publishes the events of :mod:`locedit.events` to, in order: the trajectory's
    conditioning (:func:`locedit.inversion.editing.subscribers`), the proximal extras of
    ``options``, the method's ``subscribers``, the trajectory's source-row rules, ``npi_null``,
    and the controller's end of step. An unconditional row whose result is known or unused is
    left out of the batch (:func:`uncond_rows`) and the controller's layout says which rows are
    there. ``null_prompt``: the prompt whose embedding is the "null" unconditional one (a negative
    prompt; trajectories with learned or source unconditional embeddings keep theirs).
    """
    start_calls, t0 = bundle.unet_calls, time.perf_counter()
    n = traj.num_steps
    sampler = bundle.sampler
    steps = sampler.schedule(n)
    branches = tuple(branches) if branches is not None else ("source", "target")[: len(prompts)]
    if len(branches) != len(prompts):
        raise ValueError(f"{len(prompts)} prompts for branches {branches}")
    if not 0 <= first_step <= n:  # n: no step at all (SDEdit at strength 0)
        raise LoceditError(f"sampling cannot start at step {first_step} of {n}")
    embeds = bundle.encode_text(list(prompts) + [null_prompt])
    fixed_conds, null_embed = embeds[:-1], embeds[-1:]
    has_source = branches[0] == "source"
    # the NPI rule's embedding is the source prompt's: prompts[0] only when the source branch is sampled
    source_embed = embeds[:1] if has_source and prompts[0] == traj.prompt else bundle.encode_text([traj.prompt])
    z = traj.latents[n - first_step].to(bundle.device).expand(len(prompts), -1, -1, -1).clone()
    ctrl = controller or AttentionController()
    ctrl.clock.num_steps = n
    conditioning, source_rules = trajectory_subscribers(traj, list(prompts))
    subs = [*conditioning, *([ProximalGuidance(options)] if options.proximal_quantile is not None else []),
            *subscribers, *source_rules, *([SourceAsNullOption()] if options.npi_null else []), ControllerStep(ctrl)]
    pinned = any(s.pins_source for s in subs)
    drop_pinned = pinned and not any(s.reads_every_row for s in subs)
    with controlled_attention(bundle.unet, ctrl) if controller is not None else contextlib.nullcontext():
        for i in track(progress, range(first_step, n), "editing" if len(prompts) > 1 or not has_source else "sampling"):
            s = steps[i]
            state = StepState(bundle, traj, ctrl, branches, s, z, fixed_conds, null_embed, null_embed, source_embed,
                              pinned)
            publish(subs, "before_step", state)
            publish(subs, "model_input", state)
            ctrl.clock.set(i, s.t, "sample")
            z, unc, conds = state.z, state.uncond, state.conds
            rows = uncond_rows(branches, controller, drop_pinned, unc, conds)
            ctrl.layout = BatchLayout(tuple((b, "uncond") for b in rows) + tuple((b, "cond") for b in branches))
            keep = [branches.index(b) for b in rows]
            with torch.no_grad():
                pred = bundle.predict(torch.cat([z[keep], z]), s, torch.cat([unc.expand(len(keep), -1, -1), conds]))
            pred_c = pred[len(keep):]
            pred_u = pred_c.clone()  # rows left out: their conditional prediction (see uncond_rows)
            pred_u[keep] = pred[: len(keep)]
            state.pred_u, state.pred_c, state.delta = pred_u, pred_c, pred_c - pred_u
            publish(subs, "after_prediction", state)
            state.z_next = sampler.step(z, cfg(pred_u, pred_c, options.guidance, state.delta), s)
            publish(subs, "after_step", state)
            z = state.z_next
    blend_mask = getattr(ctrl, "last_blend_mask", next((s.blend_mask for s in subs if s.blend_mask is not None), None))
    return SampleResult(z, bundle.unet_calls - start_calls, time.perf_counter() - t0, blend_mask)


@torch.no_grad()
def generate(bundle: ModelBundle, prompts: list[str], num_steps: int = 50, guidance: float = 7.5,
             generator: torch.Generator | None = None, progress: Progress | None = None) -> torch.Tensor:
    """Text-to-image sampling with CFG from seeded noise; returns latents (B, C, h, w)."""
    sampler = bundle.sampler
    embeds = bundle.encode_text(list(prompts) + [""])
    cond, null = embeds[:-1], embeds[-1:]
    b = len(prompts)
    side = bundle.unet.config.sample_size
    z = torch.randn((b, bundle.unet.config.out_channels, side, side), generator=generator).to(bundle.device)
    batch_embeds = torch.cat([null.expand(b, -1, -1), cond])
    for s in track(progress, sampler.schedule(num_steps), "generating"):
        pred_u, pred_c = bundle.predict(torch.cat([z, z]), s, batch_embeds).chunk(2)
        z = sampler.step(z, cfg(pred_u, pred_c, guidance), s)
    return z


def as_input(image) -> torch.Tensor:
    """An image as the library takes it: a PIL image, an (H, W, 3) uint8 array or a (1, 3, H, W) float
    tensor in [0, 1], of any size -> (1, 3, H, W) float in [0, 1]."""
    if isinstance(image, torch.Tensor):
        if image.dim() != 4 or image.shape[:2] != (1, 3):
            raise LoceditError(f"an image tensor must be (1, 3, H, W), got {tuple(image.shape)}")
        return image
    import numpy as np

    if hasattr(image, "convert"):  # PIL
        image = image.convert("RGB")
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] < 3:
        raise LoceditError(f"an image array must be (H, W, 3), got {a.shape}")
    return torch.from_numpy(a[..., :3].astype(np.float32) / 255.0).permute(2, 0, 1)[None].contiguous()


def fit_input(bundle: ModelBundle, image, fit: str = "pad") -> tuple[torch.Tensor, Fit]:
    """(``image`` at the model's size, the :class:`Fit` that undoes it); any size in, the model's out."""
    image = as_input(image)
    plan = Fit.plan(image.shape[-2], image.shape[-1], bundle.image_size, fit)
    return plan.to_model(image.to(bundle.device)), plan


def _fit_mask(plan: Fit, mask: torch.Tensor | None, what: str) -> torch.Tensor | None:
    """A mask at the input image's size -> the model's (refused at any other size)."""
    if mask is None or plan.identity:
        return mask
    if tuple(mask.shape[-2:]) != (plan.height, plan.width):
        raise LoceditError(f"{what} is {mask.shape[-1]}x{mask.shape[-2]} but the image is {plan.width}x{plan.height}")
    return plan.to_model(mask, binary=True)


def invert(bundle: ModelBundle, image, prompt: str, inversion: str = DEFAULT_INVERSION, num_steps: int = 50,
           guidance: float = 7.5, options=None, progress: Progress | None = None,
           grad_checkpointing: bool = False, fit: str = "pad") -> Trajectory:
    """Encode ``image`` (any size: see :func:`as_input`; fitted to the model's square by ``fit``, "pad"
    or "resize") and invert it with ``inversion``, a name of :data:`INVERSIONS` (``grad_checkpointing``:
    see :meth:`ModelBundle.checkpointing`). The trajectory is what :func:`edit` takes as
    ``trajectory=``, in memory, to edit the same image again without inverting it again."""
    if inversion not in INVERSIONS:
        raise LoceditError(f"unknown inversion {inversion!r}; choose one of {', '.join(INVERSIONS)}")
    check_family(bundle, UNET_FAMILIES, f"--inversion {inversion}")
    opt_cls, fn = INVERSIONS[inversion].Options, INVERSIONS[inversion].run
    if grad_checkpointing and not getattr(opt_cls, "TAKES_GRADIENTS", False):
        raise LoceditError(f"--grad-checkpointing has no effect on --inversion {inversion}: it takes no gradients")
    options = options if options is not None else opt_cls()
    bundle.token_ids(prompt)
    image, _ = fit_input(bundle, image, fit)
    start, t0 = bundle.unet_calls, time.perf_counter()
    z0 = bundle.encode_image(image)
    with bundle.checkpointing(grad_checkpointing):
        traj = fn(bundle, z0, prompt, num_steps, guidance, options, progress)
    traj.model = bundle.name
    traj.stats.update(unet_calls=bundle.unet_calls - start, seconds=time.perf_counter() - t0)
    return traj


def reconstruct(bundle: ModelBundle, traj: Trajectory, options: EditOptions = EditOptions(),
                progress: Progress | None = None) -> SampleResult:
    """Sample the source prompt alone from the trajectory's noise."""
    return sample(bundle, traj, [traj.prompt], options, None, progress)


@dataclass
class EditResult:
    """An edit: ``edited`` (1, 3, H, W) in [0, 1] at the input image's size (the model's size when
    only a trajectory was given), ``images`` the same as PIL images, ``save(path)`` to write it with
    what produced it; ``stats``: UNet calls and seconds (``unet_calls``: inversion and edit
    together); ``trajectory``: the inversion, for :func:`edit`'s ``trajectory=``."""

    edited: torch.Tensor
    trajectory: Trajectory
    sample: SampleResult
    stats: dict = field(default_factory=dict)
    bundle: ModelBundle | None = field(default=None, repr=False)
    _source: torch.Tensor | None = field(default=None, repr=False)
    branches: tuple[str, ...] = ("source", "target")
    fit: Fit | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict)

    @property
    def source(self) -> torch.Tensor:
        """(1, 3, H, W) the source branch's reconstruction at the edit's size, decoded on first use (an
        edit decodes only the target: the VAE decoder costs as much as several UNet calls); for a
        method that samples the target alone, the decoded image latent the trajectory starts from."""
        if self._source is None:
            traj = self.trajectory
            z = (self.sample.latents[0:1] if self.branches[0] == "source"
                 else traj.image_latent if traj.image_latent is not None else traj.latents[0])
            with torch.no_grad():
                decoded = self.bundle.decode_latents(z.to(self.bundle.device))
            self._source = self.fit.from_model(decoded) if self.fit is not None else decoded
        return self._source

    @property
    def images(self) -> list:
        """The edit as PIL images (RGB, the input's size), one per batch row."""
        from PIL import Image

        a = (self.edited.permute(0, 2, 3, 1).float().clamp(0, 1).cpu().numpy() * 255).round().astype("uint8")
        return [Image.fromarray(x) for x in a]

    def save(self, path) -> str:
        """Write the edit to ``path`` (.png with ``meta`` as ``locedit:KEY`` text chunks; .jpg, .webp),
        atomically; returns the path."""
        from .fileio import check_output, save_png

        check_output(path, "path")
        save_png(self.edited, path, self.meta)
        return str(path)


class AttentionRecorder(AttentionController):
    """Accumulates the target's conditional maps of chosen words over the sampling steps
    (for ``--save-attention``); only those tokens, at the map level, are kept."""

    reads = frozenset({("target", "cond")})
    writes = frozenset()

    def __init__(self, bundle: ModelBundle, target: str, words: list[str]):
        from .attention import MapRequest, TokenMapStore
        from .diffusion.text import token_positions

        super().__init__()
        self.words = list(words)
        self.level = map_level(unet_sites(bundle.unet))
        self.store = TokenMapStore({w: MapRequest("target", tuple(token_positions(bundle.tokenizer, target, w)))
                                    for w in self.words})

    def wants(self, site) -> bool:
        return (self.clock.phase == "sample" and site.kind == "cross" and site.level == self.level
                and site.place != "mid")

    def edit_probs(self, probs, site):
        self.store.add(probs, site, self.layout)
        return probs

    def after_step(self, latents):
        self.store.start_step()
        return latents

    def maps(self) -> dict[str, torch.Tensor]:
        """word -> (side, side) map, summed over the word's tokens, averaged over steps."""
        return {w: self.store.maps(w).sum(0) / max(1, len(self.store._steps)) for w in self.words}


def _checked_request(bundle, image, source, target, method, options, inversion, trajectory, mask, blend_words,
                     regions, attributes, pairs, record_words, num_steps, edit_options, seed):
    """Every check of :func:`edit` that needs no UNet call; returns (method class, options, request)."""
    from .methods import METHODS, EditRequest

    if method not in METHODS:
        raise LoceditError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    m = METHODS[method]
    check_family(bundle, m.families, f"--method {method}")
    inversion = inversion or m.inversion  # none named: the one its paper uses
    options = options if options is not None else m.Options()
    if not isinstance(options, m.Options):
        raise LoceditError(f"method {method!r} takes {m.Options.__name__}, not {type(options).__name__}")
    steps = trajectory.num_steps if trajectory is not None else num_steps
    uncond = uncond_of(m.takes_inversion(options), inversion, trajectory.uncond if trajectory is not None else None,
                       edit_options.npi_null)
    request = EditRequest(source, target, mask, tuple(blend_words) if blend_words else None, tuple(regions),
                          tuple(attributes), tuple(pairs), steps, edit_options.guidance, seed, uncond)
    m.check_inputs(request)
    if trajectory is None and image is None:
        raise LoceditError("edit needs an image or a trajectory")
    if trajectory is not None and trajectory.prompt != source:
        raise PromptError(f"the trajectory was inverted with prompt {trajectory.prompt!r}, not {source!r}")
    own = not m.takes_inversion(options)
    if own and trajectory is not None and trajectory.method != method:
        raise LoceditError(f"method {method!r} makes its own inversion; a {trajectory.method!r} trajectory cannot be used")
    if not own and trajectory is None and inversion not in INVERSIONS:
        raise LoceditError(f"unknown inversion {inversion!r}; choose one of {', '.join(INVERSIONS)}")
    m.check(bundle, request, options)
    if edit_options.grad_checkpointing:
        from .methods.base import check_grad_checkpointing

        check_grad_checkpointing(m, options, None if own else inversion, trajectory is not None)
    for w in record_words:
        from .diffusion.text import token_positions

        token_positions(bundle.tokenizer, target, w)
    return m, options, request, inversion


def _trajectory_for(bundle, image, request, m, options, inversion, inversion_options, num_steps, guidance, progress,
                    cache) -> tuple[Trajectory, bool]:
    """(the edit's trajectory, whether it came from ``cache``): the method's own inversion, or one from
    the registry, kept in ``cache`` (one entry: the latest image and prompt) when the caller has one."""
    if not m.takes_inversion(options):
        t0, calls = time.perf_counter(), bundle.unet_calls
        trajectory = m.invert(bundle, image, request, options, progress)
        trajectory.model = bundle.name
        trajectory.stats.setdefault("unet_calls", bundle.unet_calls - calls)
        trajectory.stats.setdefault("seconds", time.perf_counter() - t0)
        return trajectory, False
    key = None
    if cache is not None:
        import hashlib

        digest = hashlib.sha256(image.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()
        key = (bundle.name, digest, request.source, inversion, repr(inversion_options), num_steps, guidance)
        if key in cache:
            return cache[key], True
    trajectory = invert(bundle, image, request.source, inversion, num_steps, guidance, inversion_options, progress)
    if key is not None:
        cache.clear()
        cache[key] = trajectory
    return trajectory, False


def edit(bundle: ModelBundle, image, source: str, target: str, *, method: str = "p2p",
         options=None, inversion: str | None = None, inversion_options=None, trajectory: Trajectory | None = None,
         mask: torch.Tensor | None = None, blend_words: tuple[str, str] | None = None, regions=(), attributes=(),
         pairs=(), record_words: tuple[str, ...] = (), num_steps: int = 50, guidance: float | None = None,
         edit_options: EditOptions = EditOptions(), progress: Progress | None = None, seed: int = 0,
         cache: dict | None = None, fit: str = "pad") -> EditResult:
    """Invert ``image`` (or reuse ``trajectory``, from :func:`invert` or an earlier result's) under
    ``source`` and edit it towards ``target`` with ``method`` from :data:`locedit.methods.METHODS`.

    ``image``: a PIL image, (H, W, 3) uint8 array or (1, 3, H, W) tensor of any size, fitted to the
    model's square (``fit``: "pad" or "resize") and the edit fitted back, so ``result.edited`` and
    ``result.images`` have the input's size. ``options``: the method's options dataclass (default:
    its defaults; ``locedit.options.preset`` builds the paper's or the official reading).
    ``inversion``: a name of :data:`INVERSIONS` (None: the one the method's paper uses,
    ``Method.inversion``: null-text for P2P, MAG-Edit, MDE-Edit; DDIM for MasaCtrl, Plug-and-Play,
    DiffEdit). ``num_steps`` and ``guidance`` (classifier-free scale, default 7.5): the sampler's;
    ``edit_options`` holds the rarer settings (:class:`EditOptions`). Inputs at the image's size:
    ``mask`` (1, 1, H, W), ``blend_words`` (source word, target word), ``regions`` / ``attributes``
    (:class:`locedit.masks.Region`), ``pairs`` ((adjective, noun), LocInv). An input the method does
    not use is refused. ``record_words``: target words whose accumulated maps are returned in
    ``stats["attention"]``. ``seed``: the noise of the methods that draw it (SDEdit, Blended Latent
    Diffusion); the others are deterministic. ``cache``: a dict the caller keeps between edits
    (the web app's session): an inversion from the registry of the same image, prompt, inversion,
    options, steps and guidance on the same model is taken from it instead of being run again.
    ``progress``: :func:`locedit.progress.tqdm_progress` for bars (silent by default).
    Every check runs before the first UNet call.
    """
    if guidance is not None:
        edit_options = replace(edit_options, guidance=float(guidance))
    plan_fit = None
    if image is not None:
        image, plan_fit = fit_input(bundle, image, fit)
        mask = _fit_mask(plan_fit, mask, "mask")
        regions = [Region(r.word, _fit_mask(plan_fit, r.mask, f"region {r.word!r}")) for r in regions]
        attributes = [Region(r.word, _fit_mask(plan_fit, r.mask, f"attribute {r.word!r}")) for r in attributes]
    m, options, request, inversion = _checked_request(bundle, image, source, target, method, options, inversion, trajectory,
                                           mask, blend_words, regions, attributes, pairs, record_words, num_steps,
                                           edit_options, seed)
    plan = m.build(bundle, request, options)
    controller = plan.controller
    recorder = AttentionRecorder(bundle, target, list(record_words)) if record_words else None
    if recorder is not None:
        from .attention import Chain

        controller = Chain([controller, recorder]) if controller is not None else recorder
    reused = False
    with bundle.checkpointing(edit_options.grad_checkpointing):
        if trajectory is None:
            trajectory, reused = _trajectory_for(bundle, image, request, m, options, inversion, inversion_options,
                                                 num_steps, edit_options.guidance, progress, cache)
        prompts = {"source": source, "target": target, **plan.prompts}
        result = sample(bundle, trajectory, [prompts[b] for b in plan.branches], edit_options, controller, progress,
                        plan.subscribers, branches=plan.branches, first_step=plan.first_step,
                        null_prompt=plan.null_prompt)
    if not torch.isfinite(result.latents).all():
        raise OptimisationError("the edit produced NaN or inf latents (corrupt weights, or fp16 overflow: try --dtype fp32)")
    with torch.no_grad():
        edited = bundle.decode_latents(result.latents[-1:])
    if plan_fit is not None:
        edited = plan_fit.from_model(edited)
    stats = {
        "inversion_unet_calls": 0 if reused else trajectory.stats.get("unet_calls", 0),
        "inversion_seconds": 0.0 if reused else trajectory.stats.get("seconds", 0.0),
        "edit_unet_calls": result.unet_calls,  # with a subscriber's preparation (DiffEdit's mask)
        "edit_seconds": result.seconds,
    }
    stats["unet_calls"] = stats["inversion_unet_calls"] + stats["edit_unet_calls"]
    if reused:
        stats["inversion_reused"] = True
    for s in plan.subscribers:
        stats.update(s.stats())
    if recorder is not None and recorder.store.recorded:
        stats["attention"] = recorder.maps()
    meta = _meta(bundle, trajectory, method, options, m.takes_inversion(options), source, target, edit_options,
                 seed, plan_fit)
    return EditResult(edited, trajectory, result, stats, bundle, branches=plan.branches, fit=plan_fit, meta=meta)


def _meta(bundle, trajectory, method, options, uses_inversion, source, target, edit_options, seed, plan_fit) -> dict:
    """What :meth:`EditResult.save` writes into the PNG (the command line adds its command)."""
    from . import __version__
    from .options import describe

    meta = {"source": source, "target": target, "model": bundle.name, "method": method, "options": describe(options),
            "steps": trajectory.num_steps, "seed": seed, "guidance": edit_options.guidance,
            "locedit_version": __version__}
    if plan_fit is not None:
        meta["fit"] = plan_fit.mode
    if uses_inversion:
        meta["inversion"] = trajectory.method
    extras = {k: v for k, v in describe(edit_options).items() if k != "guidance" and v not in (None, False)}
    if extras:
        meta["edit_options"] = extras
    return meta
