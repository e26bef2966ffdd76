"""Runs one of the two pipeline calls of LIME's ``lime.ipynb`` (enisimsar/LIME, ``pipeline.py``) in
its environment and records :mod:`measure`'s figures.

Observation only: the pipeline is loaded before the clock starts; ``vae.decode`` is wrapped to keep
the latents the pipeline decodes and the image it gets back; a pre-hook counts UNet calls. The
edit call gets the box around the square as its mask, at the notebook's ``out_res`` (a quarter of
the image side), and the related tokens by ``utils.get_effective_tokens``'s rule (every token but
the start token and the stop words; see bench/peers/lime_ip2p.py for why utils.py is not imported).
"""

import os
import sys

import measure
import numpy as np
import torch
from PIL import Image

spec, out = measure.args()
torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
sys.path.insert(0, spec["src"])
from pipeline import StableDiffusionInstructPix2PixPipeline  # noqa: E402  (theirs, from the adapted copy)

pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(spec["model"], torch_dtype=torch.float32,
                                                              safety_checker=None, requires_safety_checker=False)
pipe = pipe.to(spec["device"])
pipe.set_progress_bar_config(disable=True)
size = spec["size"]
image = Image.open(spec["image"]).convert("RGB").resize((size, size))
decoded = []
_decode = pipe.vae.decode


def recording_decode(z, *args, **kwargs):
    res = _decode(z, *args, **kwargs)
    decoded.append((z * pipe.vae.config.scaling_factor, res[0] if isinstance(res, tuple) else res.sample))
    return res


pipe.vae.decode = recording_decode
prompt = spec["instruction"]
generator = torch.Generator(device="cpu").manual_seed(spec["seed"])
ids = pipe.tokenizer(prompt)["input_ids"]
words = [pipe.tokenizer.decode(int(t)) for t in ids]
# utils.py's rule (locate_points, get_effective_tokens): every token but the start token and the stop
# words (and punctuation and verbs in locate_points; the instruction has none)
effective = [i for i, w in enumerate(words) if i > 0 and w not in set(spec["stop_words"])]
if spec["method"].startswith("lime-localize"):  # the notebook's first call
    # attn_res=16 there is an int: the store keeps maps of >= np.prod(16) = 16 pixels (side 4 at 512 px,
    # i.e. latent / 16), which at this size is max(1, (size // 128) ** 2)
    kwargs = dict(guidance_scale=5.5, image_guidance_scale=1.5, attn_res=max(1, (size // 128) ** 2),
                  out_res=size // 4, apply_mask_range=spec["localize_range"])
else:  # the second call, with the box mask at out_res (the notebook's segmentation-map resolution)
    box = np.asarray(Image.open(spec["masks"][1]).convert("L").resize((size // 4, size // 4), Image.NEAREST)) > 127
    kwargs = dict(guidance_scale=2, image_guidance_scale=1.5, mask=box, effective_tokens=effective,
                  apply_mask_range=spec["edit_range"])
with measure.Meter(pipe.unet, spec["device"], [pipe.unet, pipe.vae, pipe.text_encoder]) as meter:
    pipe(prompt=prompt, image=image, num_inference_steps=spec["steps"], generator=generator, **kwargs)
latents, images = decoded[-1]
picture = ((images[0] / 2 + 0.5).clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
extra = {}
if spec["method"].startswith("lime-localize"):  # what utils.py would cluster and rank, before k-means
    store = pipe.attention_store
    attention = store.aggregate_attention(["down_cross", "up_cross", "mid_cross"])[:, :, effective].mean(2)
    feats = store.aggregate_attention(["down_feats", "up_feats", "mid_feats"]).float()
    flat = feats.reshape(-1, feats.shape[-1])
    flat = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-12)  # sklearn's normalize(norm="l2")
    extra = {"attention": attention, "feature_gram": flat @ flat.T}  # the Gram: any feature order
measure.write(out, meter.figures(), latents, picture, extra)
