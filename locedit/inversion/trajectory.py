"""The trajectory an inversion hands to the editing side, and its on-disk form.

``latents[k]`` is the latent after k inversion steps: ``latents[0]`` is the encoded image and
``latents[N]`` the noise the editing loop starts from; sampling step i goes from
``latents[N - i]`` to ``latents[N - i - 1]``.

``uncond`` says what the unconditional rows use during editing:
- "null": the empty prompt's embedding (DDIM, SPDInv, direct inversion);
- "learned": ``null_embeddings[i]`` per sampling step (null-text inversion);
- "source": the source prompt's embedding (negative-prompt inversion).
``source_follows``: the editing loop pins the source branch to ``latents`` (direct inversion).
``token_vectors``: per-step input-token vectors of some words (LocInv); the editing loop encodes
both prompts at each step with them in place of those words' token embeddings.
``source_guidance``: the parameters of Noise Map Guidance's move of the source row before each step
(``grad_scale``, ``scale``, ``loss``; :func:`locedit.inversion.nmg.noise_map_step`).

A trajectory is data: :func:`locedit.inversion.editing.subscribers` turns these fields into the
editing loop's subscribers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

UNCOND_MODES = ("null", "learned", "source")
FORMAT_VERSION = 1


@dataclass
class Trajectory:
    method: str
    prompt: str
    num_steps: int
    guidance: float  # the CFG scale the inversion prepared for (NTI); 1 when irrelevant
    latents: list[torch.Tensor]  # N + 1 tensors (1, C, h, w), float32
    uncond: str = "null"
    null_embeddings: list[torch.Tensor] | None = None  # N tensors (1, L, D) for "learned"
    source_follows: bool = False
    stats: dict = field(default_factory=dict)  # unet_calls, seconds, per-step residuals, ...
    model: str = ""
    # learned input-token vectors per word (LocInv): word -> (N, tokens of the word, D_in)
    token_vectors: dict[str, torch.Tensor] = field(default_factory=dict)
    # the encoded image when ``latents[0]`` is not it (Blended Latent Diffusion's per-step noised
    # copies); not saved: such trajectories belong to one edit
    image_latent: torch.Tensor | None = None
    source_guidance: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.uncond not in UNCOND_MODES:
            raise ValueError(f"uncond must be one of {UNCOND_MODES}, got {self.uncond!r}")
        if len(self.latents) != self.num_steps + 1:
            raise ValueError(f"expected {self.num_steps + 1} latents, got {len(self.latents)}")
        if self.uncond == "learned" and (self.null_embeddings is None or len(self.null_embeddings) != self.num_steps):
            raise ValueError("uncond 'learned' needs one null embedding per step")

    @property
    def noise(self) -> torch.Tensor:
        return self.latents[-1]

    def target_latent(self, step: int) -> torch.Tensor:
        """The inversion latent that sampling step ``step`` should land on."""
        return self.latents[self.num_steps - step - 1]

    # ---- disk form: trajectory.safetensors + manifest.json --------------------------------------------
    def save(self, folder: str | Path, extra: dict | None = None) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {"latents": torch.cat(self.latents).contiguous().cpu()}
        if self.null_embeddings is not None:
            tensors["null_embeddings"] = torch.cat(self.null_embeddings).contiguous().cpu()
        for word, vec in self.token_vectors.items():
            tensors[f"token:{word}"] = vec.contiguous().cpu()
        save_file(tensors, str(folder / "trajectory.safetensors"))
        manifest = {
            "format": FORMAT_VERSION,
            "method": self.method,
            "prompt": self.prompt,
            "num_steps": self.num_steps,
            "guidance": self.guidance,
            "uncond": self.uncond,
            "source_follows": self.source_follows,
            "model": self.model,
            "source_guidance": self.source_guidance,
            "stats": {k: v for k, v in self.stats.items() if isinstance(v, (int, float, str, list))},
            **(extra or {}),
        }
        (folder / "manifest.json").write_text(json.dumps(manifest, indent=2))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> tuple["Trajectory", dict]:
        """Returns the trajectory and the whole manifest (with any extra keys saved beside it).
        Anything unreadable, truncated or inconsistent is a one-line :class:`LoceditError`."""
        from ..errors import LoceditError

        try:
            return cls._load(Path(folder))
        except LoceditError:
            raise
        except Exception as exc:  # json, safetensors (truncated files), missing keys, bad values
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LoceditError(f"--from-inversion {str(folder)!r} is not a readable saved trajectory: {first[:160]}") from None

    @classmethod
    def _load(cls, folder: Path) -> tuple["Trajectory", dict]:
        from safetensors.torch import load_file

        from ..errors import LoceditError

        if not (folder / "manifest.json").is_file() or not (folder / "trajectory.safetensors").is_file():
            raise LoceditError(f"--from-inversion {str(folder)!r} has no manifest.json and trajectory.safetensors "
                               "(write one with 'locedit invert')")
        manifest = json.loads((folder / "manifest.json").read_text())
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"unsupported trajectory format {manifest.get('format') if isinstance(manifest, dict) else manifest!r}")
        tensors = load_file(str(folder / "trajectory.safetensors"))
        nulls = tensors.get("null_embeddings")
        traj = cls(
            method=manifest["method"],
            prompt=manifest["prompt"],
            num_steps=manifest["num_steps"],
            guidance=manifest["guidance"],
            latents=list(tensors["latents"].split(1)),
            uncond=manifest["uncond"],
            null_embeddings=list(nulls.split(1)) if nulls is not None else None,
            source_follows=manifest["source_follows"],
            stats=manifest.get("stats", {}),
            model=manifest.get("model", ""),
            token_vectors={k[len("token:"):]: v for k, v in tensors.items() if k.startswith("token:")},
            source_guidance=dict(manifest.get("source_guidance") or {}),
        )
        _check_manifest(manifest)
        g = traj.source_guidance
        if g.get("rule") == "nmg":  # written before the rule was named by the fields alone
            g.pop("rule")
        if g and not (set(g) == {"grad_scale", "scale", "loss"} and g["loss"] in ("l1", "l2", "smooth_l1")
                      and all(isinstance(g[k], (int, float)) for k in ("grad_scale", "scale"))):
            raise ValueError(f"unknown source_guidance {g!r}")
        return traj, manifest

    def check_against(self, bundle) -> None:
        """Refuse a trajectory that does not fit ``bundle`` before any UNet call: latent shape and
        dtype, the number of steps for its scheduler, the null embeddings' and token vectors' shapes."""
        from ..errors import LoceditError

        side = int(bundle.unet.config.sample_size)
        want = (1, int(bundle.unet.config.out_channels), side, side)
        for k, z in enumerate(self.latents):
            if tuple(z.shape) != want:
                raise LoceditError(f"the saved trajectory's latents are {tuple(z.shape)}, not {want} as model "
                                   f"{bundle.name!r} makes (latent {k}); invert again with this model")
            if z.dtype != torch.float32 or not torch.isfinite(z).all():
                raise LoceditError(f"the saved trajectory's latent {k} is not finite float32")
        try:
            bundle.steps(self.num_steps)
        except ValueError as exc:
            raise LoceditError(f"the saved trajectory's {self.num_steps} steps do not fit model {bundle.name!r}: {exc}") from None
        dim = int(bundle.unet.config.cross_attention_dim)
        for e in self.null_embeddings or []:
            if tuple(e.shape) != (1, bundle.embed_length, dim):
                raise LoceditError(f"the saved trajectory's null embeddings are {tuple(e.shape)}, not "
                                   f"{(1, bundle.embed_length, dim)} as model {bundle.name!r} needs")
        width = bundle.token_width()
        for word, v in self.token_vectors.items():
            if v.ndim != 3 or v.shape[0] != self.num_steps or v.shape[2] != width:
                raise LoceditError(f"the saved trajectory's token vectors of {word!r} are {tuple(v.shape)}, which do "
                                   f"not fit model {bundle.name!r}")


def _check_manifest(manifest: dict) -> None:
    """The manifest's numbers (a ValueError names the field): the steps a positive count, the image
    size positive ints and its fit a known mode. (The inversion's name is checked by the caller,
    which knows the methods that make their own: :func:`locedit.api.read_inputs`.)"""
    from ..imaging import FIT_MODES

    steps = manifest["num_steps"]
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"num_steps {steps!r} in manifest.json is not a positive integer")
    image = manifest.get("image")
    if image is not None:
        for key in ("height", "width"):
            v = image.get(key) if isinstance(image, dict) else None
            if not isinstance(v, int) or isinstance(v, bool) or not 0 < v <= 1 << 16:
                raise ValueError(f"image {key} {v!r} in manifest.json is not a size in pixels")
        if image.get("fit", "pad") not in FIT_MODES:
            raise ValueError(f"image fit {image.get('fit')!r} in manifest.json is not one of {', '.join(FIT_MODES)}")

