"""Runs PnPInversion's own P2P editor (cure-lab/PnPInversion, ``models/p2p_editor.py``) inside its
environment, exactly as its ``run_editing_p2p.py`` calls it for one PIE-Bench row, and records the
figures of :mod:`measure`.

Only observation is added: ``latent2image`` (the editor's decoder helper) is wrapped to keep the
latents the editor decodes last (the edited pair [source, target]), and a forward pre-hook counts
UNet calls. The arguments below are ``run_editing_p2p.py``'s, word for word.
"""

import os
import sys

import measure
import numpy as np
import torch

spec, out = measure.args()
os.environ["LOCEDIT_PEER_MODEL"] = spec["model"]  # read by the patched model id in P2PEditor
sys.path.insert(0, spec["src"])
import models.p2p_editor as editor_module  # noqa: E402  (their package, from the adapted copy)
from run_editing_p2p import setup_seed  # noqa: E402

decoded = []
_latent2image = editor_module.latent2image


def recording_latent2image(model, latents, return_type="np"):
    decoded.append(latents.detach().clone())
    return _latent2image(model=model, latents=latents, return_type=return_type)


editor_module.latent2image = recording_latent2image
torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
device = torch.device(spec["device"])
editor = editor_module.P2PEditor([spec["method"]], device, num_ddim_steps=spec["steps"])
src_word, tgt_word = spec["blend_words"]
pipe = editor.ldm_stable
with measure.Meter(pipe.unet, spec["device"], [pipe.unet, pipe.vae, pipe.text_encoder]) as meter:
    setup_seed()
    torch.cuda.empty_cache()
    panel = editor(spec["method"],
                   image_path=spec["image"],
                   prompt_src=spec["source"],
                   prompt_tar=spec["target"],
                   guidance_scale=7.5,
                   cross_replace_steps=0.4,
                   self_replace_steps=0.6,
                   blend_word=(((src_word,), (tgt_word,))),
                   eq_params={"words": (tgt_word,), "values": (2,)},
                   proximal="l0",
                   quantile=0.75,
                   use_inversion_guidance=True,
                   recon_lr=1,
                   recon_t=400)
size = spec["size"]
image = np.asarray(panel)[:, -size:]  # the panel is (prompts | source | reconstruction | edit)
measure.write(out, meter.figures(), decoded[-1], image)
