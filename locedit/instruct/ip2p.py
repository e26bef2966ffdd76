"""InstructPix2Pix sampling (Brooks et al., CVPR 2023; LIME paper Eq. 2).

    eps = eps(0, 0) + s_I (eps(c_I, 0) - eps(0, 0)) + s_T (eps(c_I, c_T) - eps(c_I, 0))

One UNet call per step on a batch of three rows: (image + text), (image only), (neither), with the
image condition concatenated to the noisy latent's channels and zeros standing for "no image".
"""

from __future__ import annotations

import contextlib
import torch

from ..attention import AttentionController, BatchLayout, controlled_attention
from ..diffusion import ModelBundle
from ..diffusion.cfg import dual_cfg
from ..errors import LoceditError
from ..progress import Progress, track
from .options import SAMPLERS, IP2POptions  # noqa: F401 (re-exported)

IP2P_LAYOUT = BatchLayout((("edit", "image+text"), ("edit", "image"), ("edit", "none")))


def instruct_edit(bundle: ModelBundle, image: torch.Tensor, instruction: str, num_steps: int = 50,
                  options: IP2POptions = IP2POptions(), generator: torch.Generator | None = None,
                  controller: AttentionController | None = None, progress: Progress | None = None,
                  sampler: str = "ddim", run_steps: int | None = None) -> torch.Tensor:
    """Edit ``image`` (1, 3, S, S) in [0, 1] by ``instruction``; returns latents (1, C, h, w).

    ``run_steps``: stop after the first ``run_steps`` steps of the ``num_steps`` schedule and return
    the latents there (a caller that only records attention needs no later step); None runs all.

    ``controller`` (optional) is installed on the UNet for the loop; its layout is
    :data:`IP2P_LAYOUT` and its clock is set before every call. ``sampler``: "ddim" (deterministic)
    or "euler-ancestral" (diffusers' ``EulerAncestralDiscreteScheduler`` on the model's betas, the
    scheduler the released InstructPix2Pix checkpoint ships; its noise comes from ``generator``).
    """
    if sampler not in SAMPLERS:
        raise LoceditError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if bundle.unet.config.in_channels != 8:
        raise LoceditError(f"model {bundle.name!r} is not an InstructPix2Pix model (UNet has "
                           f"{bundle.unet.config.in_channels} input channels, expected 8)")
    cond_img = bundle.encode_image_condition(image)  # (1, 4, h, w)
    text, empty = bundle.encode_text([instruction, ""]).split(1)
    embeds = torch.cat([text, empty, empty])
    image_in = torch.cat([cond_img, cond_img, torch.zeros_like(cond_img)])
    shape = (1, bundle.unet.config.out_channels, *cond_img.shape[-2:])
    z = torch.randn(shape, generator=generator, device="cpu").to(bundle.device)
    ctrl = controller or AttentionController()
    ctrl.layout = IP2P_LAYOUT
    ctrl.clock.num_steps = num_steps
    ctx = controlled_attention(bundle.unet, ctrl) if controller is not None else contextlib.nullcontext()
    run = num_steps if run_steps is None else min(num_steps, run_steps)

    def guided(e_full, e_img, e_none):
        return dual_cfg(e_none, e_img, e_full, options.image_guidance, options.text_guidance)

    with ctx, torch.no_grad():
        if sampler == "ddim":
            ddim = bundle.sampler
            for s in track(progress, ddim.schedule(num_steps)[:run], "instruct"):
                ctrl.clock.set(s.index, s.t, "sample")
                pred = guided(*bundle.predict(z.expand(3, -1, -1, -1), s, embeds, image_in).chunk(3))
                z = ctrl.after_step(ddim.step(z, pred, s))
        else:
            from diffusers import EulerAncestralDiscreteScheduler

            euler = EulerAncestralDiscreteScheduler.from_config({**bundle.scheduler_config, "prediction_type": "epsilon"})
            euler.set_timesteps(num_steps)
            acp = euler.alphas_cumprod
            z = z * euler.init_noise_sigma
            for i in track(progress, range(run), "instruct"):
                t = euler.timesteps[i]
                ctrl.clock.set(i, int(t), "sample")
                a = float(acp[int(round(float(t)))])
                x = euler.scale_model_input(z, t)
                eps = guided(*bundle.predict_eps(x.expand(3, -1, -1, -1), t, a, embeds, image_in).chunk(3))
                z = ctrl.after_step(euler.step(eps, t, z, generator=generator).prev_sample)
    return z
