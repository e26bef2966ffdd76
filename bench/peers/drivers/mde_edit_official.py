"""Runs MDE-Edit's ``code/edit.py`` (RainbowZhuu/MDE-Edit) as ``edit_multi.sh`` does, in its
environment, on the side-by-side inputs (one object word and mask, one attribute word and mask),
and records :mod:`measure`'s figures.

Observation only, as for MAG-Edit: ``network.py`` (which loads the model on import) is imported
before the clock starts, the script runs as ``__main__`` with ``edit_multi.sh``'s command line
(``--max_iteration 15 --scale 1.5``; ``--optimization_step`` scaled to the step count with the
other windows, see bench/peers/mde_edit.py), ``ptp_utils.latent2image`` is wrapped to keep the
latents it decodes and the image it returns, and a pre-hook counts UNet calls.
"""

import os
import runpy
import sys
import tempfile

import measure
import numpy as np
import torch

spec, out = measure.args()
os.environ["LOCEDIT_PEER_MODEL"] = spec["model"]
torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
import network  # noqa: E402  (their module, from the adapted copy: loads the pipeline)
import ptp_utils  # noqa: E402

decoded = []
_latent2image = ptp_utils.latent2image


def recording_latent2image(vae, latents):
    image = _latent2image(vae, latents)
    decoded.append((latents.detach().clone(), image.detach().clone()))
    return image


ptp_utils.latent2image = recording_latent2image
pipe = network.ldm_stable
with tempfile.TemporaryDirectory() as folder:
    sys.argv = ["edit.py", f"--source_prompt={spec['source']}", f"--target_prompt={spec['target']}",
                f"--img_path={spec['image']}", "--oal_mask", spec["masks"][0], f"--idx2words=1:{spec['object']}",
                "--ccl_mask", spec["masks"][1], "--ccl_word", spec["attribute"], f"--result_dir={folder}",
                "--max_iteration=15", "--scale=1.5", f"--optimization_step={spec['guided_steps']}"]
    with measure.Meter(pipe.unet, spec["device"], [pipe.unet, pipe.vae, pipe.text_encoder]) as meter:
        runpy.run_path(os.path.join(spec["src"], "code", "edit.py"), run_name="__main__")
latents, images = decoded[-1]
picture = (images[1].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
measure.write(out, meter.figures(), latents, picture)
