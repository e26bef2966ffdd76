"""Noise Map Guidance (Cho et al., Noise Map Guidance: Inversion with Spatial Context for Real
Image Editing, ICML 2024; hansam95/NMG, ``prompt_to_prompt/pipeline_stable_diffusion_nmg.py``).

The inversion is DDIM's (the code's ``invert`` with guidance 1 on the source prompt); what NMG adds
is an editing-side rule on the source branch. At every sampling step, before the text-conditioned
step, the source latent x is moved once with a "noise-map" guided prediction:

    eps_u = eps(x, t, null);  z_u = DDIM(x, eps_u);  L = l1(z_u, z*_{t-1})
    eps_c = eps_u - sqrt(1 - a_t) * grad_scale * (-dL/dx);  eps = eps_u + s_N (eps_c - eps_u)
    x := DDIM(x, eps)                        (t -> t-1, as the code's ``scheduler.step``)

with z*_{t-1} the inversion's latent at the level the step lands on; the text-conditioned step of
every row then runs from the new x at timestep t, as the code does (the source row takes two DDIM
moves per step: the guided one, then the text one). The guided call sees no attention control
(``use_controller: False``): locedit runs it in the clock's "inversion-guide" phase, which no
controller acts on. Defaults are the code's: grad_scale 5e3, s_N 10, L1 (``__call__``); the code's
text guidance is 10 (pass ``--guidance 10``; locedit's default is 7.5 for every inversion).
Difference: the code draws the image latent from the VAE posterior (``latent_dist.sample``);
locedit takes its mean, as for every inversion.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..diffusion import ModelBundle
from ..diffusion.cfg import cfg
from ..diffusion.sampler import Step
from ..events import StepState, Subscriber
from ..progress import Progress
from .ddim import ddim_latents
from .options import NMGOptions
from .trajectory import Trajectory


def nmg_loss(z: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "l2":
        return F.mse_loss(z, target)
    if kind == "smooth_l1":
        return F.smooth_l1_loss(z, target, beta=1e-4)
    return F.l1_loss(z, target)


def noise_map_step(bundle: ModelBundle, z: torch.Tensor, move: Step, null: torch.Tensor, target: torch.Tensor,
                   grad_scale: float, scale: float, loss: str = "l1") -> torch.Tensor:
    """One noise-map-guided DDIM move of the source latent ``z`` (1, C, h, w) by sampling step ``move``
    towards the inversion latent ``target`` (module docstring); returns the moved latent, detached."""
    sampler = bundle.sampler
    with torch.enable_grad():
        x = z.detach().requires_grad_(True)
        eps_u = bundle.predict(x, move, null)
        value = nmg_loss(sampler.step(x, eps_u, move), target, loss)
        grad = -torch.autograd.grad(value, x)[0]
    eps_u = eps_u.detach()
    eps_c = eps_u - (1 - torch.as_tensor(move.at)).sqrt() * grad * grad_scale
    return sampler.step(z, cfg(eps_u, eps_c, scale), move).detach()


def nmg_inversion(bundle: ModelBundle, z0: torch.Tensor, prompt: str, num_steps: int, guidance: float,
                  options: NMGOptions = NMGOptions(), progress: Progress | None = None) -> Trajectory:
    latents = ddim_latents(bundle, z0, bundle.encode_text([prompt]), num_steps, progress, "nmg (ddim) inversion")
    move = {"grad_scale": options.grad_scale, "scale": options.scale, "loss": options.loss}
    return Trajectory("nmg", prompt, num_steps, guidance, latents, uncond="null", source_guidance=move)


class NoiseMapGuidance(Subscriber):
    """The editing side of NMG: before every sampling step's model input, the source row is moved by
    :func:`noise_map_step` with the step's unconditional embedding, in the clock's "inversion-guide"
    phase (no controller acts on it). Skipped when a method pins the source row (Plug-and-Play),
    which would discard the move."""

    def __init__(self, grad_scale: float, scale: float, loss: str = "l1"):
        self.grad_scale, self.scale, self.loss = grad_scale, scale, loss

    def model_input(self, state: StepState) -> None:
        if not state.has_source or state.source_pinned:
            return
        state.controller.clock.set(state.step, state.t, "inversion-guide")
        target = state.trajectory.target_latent(state.step).to(state.z)
        moved = noise_map_step(state.bundle, state.z[0:1], state.move, state.uncond, target, self.grad_scale,
                               self.scale, self.loss)
        state.z = torch.cat([moved, state.z[1:]])
