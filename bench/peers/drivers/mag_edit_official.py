"""Runs MAG-Edit's ``code_tr/edit.py`` (HelenMao/MAG-Edit) as ``edit.sh`` does, in its environment,
on the side-by-side inputs, and records :mod:`measure`'s figures.

Observation only: ``network.py`` loads the model when it is imported, so it is imported before the
clock starts; the script then runs as ``__main__`` with the command line of ``edit.sh`` (prompts,
target word, image, mask, ``--max_iteration 15 --scale 2.5``), ``ptp_utils.latent2image`` is
wrapped to keep the latents it decodes and the image it returns, and a pre-hook counts UNet calls.
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
                f"--target_word={spec['blend_words'][1]}", f"--img_path={spec['image']}",
                f"--mask_path={spec['masks'][0]}", f"--result_dir={folder}", "--max_iteration=15", "--scale=2.5"]
    with measure.Meter(pipe.unet, spec["device"], [pipe.unet, pipe.vae, pipe.text_encoder]) as meter:
        runpy.run_path(os.path.join(spec["src"], "code_tr", "edit.py"), run_name="__main__")
latents, images = decoded[-1]
picture = (images[1].permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
measure.write(out, meter.figures(), latents, picture)
