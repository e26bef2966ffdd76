"""Runs SPDInv's P2P editing (leeruibin/SPDInv, ``run_SPDInv_P2P.py``) inside its environment with
the parameters its ``__main__`` builds from the command-line defaults, and records :mod:`measure`'s
figures.

Observation only: ``ptp_utils.latent2image`` is wrapped to keep the edited latents it decodes, a
pre-hook counts UNet calls, and the pipeline is loaded before the clock starts (their function loads
it itself; ``StableDiffusionPipeline.from_pretrained`` in their module builds the pipeline from the
loaded networks and the scheduler their function passes), so that both sides' times exclude
loading.
"""

import os
import sys
import tempfile

import measure
import numpy as np
import torch
from PIL import Image

spec, out = measure.args()
os.environ["LOCEDIT_PEER_MODEL"] = spec["model"]
sys.path.insert(0, spec["src"])
import run_SPDInv_P2P as spd  # noqa: E402  (their script, from the adapted copy)
from P2P import ptp_utils  # noqa: E402

torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
Pipeline = spd.StableDiffusionPipeline
loaded = Pipeline.from_pretrained(spec["model"]).to(spd.device)


class _Loaded:
    """Their ``from_pretrained(id, scheduler=...)`` with the networks already loaded: the real
    pipeline constructor still runs (it sets the scheduler's steps_offset to 1, as theirs does)."""

    @staticmethod
    def from_pretrained(name, scheduler=None, **kwargs):
        assert name == spec["model"], name
        return Pipeline.from_pretrained(name, scheduler=scheduler, unet=loaded.unet, vae=loaded.vae,
                                        text_encoder=loaded.text_encoder, tokenizer=loaded.tokenizer, **kwargs)


spd.StableDiffusionPipeline = _Loaded
decoded = []
_latent2image = ptp_utils.latent2image


def recording_latent2image(vae, latents):
    decoded.append(latents.detach().clone())
    return _latent2image(vae, latents)


ptp_utils.latent2image = recording_latent2image
src_word, tgt_word = spec["blend_words"]
params = {  # run_SPDInv_P2P.py's __main__, with its argparse defaults
    "guidance_scale": 7.5,
    "blend_word": (((src_word,), (tgt_word,))),
    "eq_params": {"words": (tgt_word,), "values": (2.0,)},
    "K_round": 25,
    "num_of_ddim_steps": spec["steps"],
    "learning_rate": 0.001,
    "enable_threshold": True,
    "delta_threshold": 5e-6,
    "prompt_src": spec["source"],
    "prompt_tar": spec["target"],
    "image_path": spec["image"],
}
with tempfile.TemporaryDirectory() as folder:
    with measure.Meter(loaded.unet, spec["device"], [loaded.unet, loaded.vae, loaded.text_encoder]) as meter:
        spd.P2P_inversion_and_edit(output_dir=folder, **params)
    saved = [f for f in os.listdir(folder) if f.endswith(".png")]
    panel = np.asarray(Image.open(os.path.join(folder, saved[0])).convert("RGB"))  # (source | edit), as they save it
measure.write(out, meter.figures(), decoded[-1], panel[:, -spec["size"]:])
