"""InstructPix2Pix sampling (Brooks et al., CVPR 2023; LIME paper Eq. 2).

    eps = eps(0, 0) + s_I (eps(c_I, 0) - eps(0, 0)) + s_T (eps(c_I, c_T) - eps(c_I, 0))

One UNet call per step on a batch of three rows: (image + text), (image only), (neither), with the
image condition concatenated to the noisy latent's channels and zeros standing for "no image".
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from ..attention import AttentionController, BatchLayout, controlled_attention
from ..diffusion import ModelBundle, ddim_step
from ..errors import LoceditError
from ..progress import Progress, track

IP2P_LAYOUT = BatchLayout((("edit", "image+text"), ("edit", "image"), ("edit", "none")))


@dataclass(frozen=True)
class IP2POptions:
    image_guidance: float = 1.5  # s_I
    text_guidance: float = 7.5  # s_T

    def __post_init__(self):
        if self.image_guidance < 0 or self.text_guidance < 0:
            raise LoceditError("image_guidance and text_guidance must be >= 0")


def instruct_edit(bundle: ModelBundle, image: torch.Tensor, instruction: str, num_steps: int = 50,
                  options: IP2POptions = IP2POptions(), generator: torch.Generator | None = None,
                  controller: AttentionController | None = None, progress: Progress | None = None) -> torch.Tensor:
    """Edit ``image`` (1, 3, S, S) in [0, 1] by ``instruction``; returns latents (1, C, h, w).

    ``controller`` (optional) is installed on the UNet for the loop; its layout is
    :data:`IP2P_LAYOUT` and its clock is set before every call.
    """
    if bundle.unet.config.in_channels != 8:
        raise LoceditError(f"model {bundle.name!r} is not an InstructPix2Pix model (UNet has "
                           f"{bundle.unet.config.in_channels} input channels, expected 8)")
    sched = bundle.schedule(num_steps)
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
    with ctx, torch.no_grad():
        for i in track(progress, range(num_steps), "instruct"):
            t, a, a_next = sched.timesteps[i], sched.alphas[i], sched.alphas_next[i]
            ctrl.clock.set(i, t, "sample")
            e_full, e_img, e_none = bundle.predict_eps(z.expand(3, -1, -1, -1), t, a, embeds, image_in).chunk(3)
            eps = e_none + options.image_guidance * (e_img - e_none) + options.text_guidance * (e_full - e_img)
            z = ctrl.after_step(ddim_step(z, eps, a, a_next))
    return z
