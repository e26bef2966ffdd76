"""The model as each environment reads it: token ids and text embeddings of the prompts, one UNet
call on fixed inputs, the VAE's latent of the input image and its decoding. Run with the official
environment's python and with locedit's, it shows whether the two libraries compute the same
networks before any method is compared (plain diffusers/transformers calls that every version has).
"""

import measure
import numpy as np
import torch
from PIL import Image

spec, out = measure.args()
from diffusers import AutoencoderKL, UNet2DConditionModel  # noqa: E402
from transformers import CLIPTextModel, CLIPTokenizer  # noqa: E402

folder = spec["model"]
tok = CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")
te = CLIPTextModel.from_pretrained(folder, subfolder="text_encoder").eval()
unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet").eval()
vae = AutoencoderKL.from_pretrained(folder, subfolder="vae").eval()
with torch.no_grad():
    ids = tok([spec["source"], spec["target"], ""], padding="max_length", max_length=tok.model_max_length,
              truncation=True, return_tensors="pt").input_ids
    emb = te(ids)[0]
    g = torch.Generator().manual_seed(0)
    side = spec["size"] // 8
    z = torch.randn((1, unet.config.in_channels, side, side), generator=g)  # 8 channels: InstructPix2Pix
    eps = unet(torch.cat([z, z]), torch.tensor(501), encoder_hidden_states=emb[:2]).sample
    img = torch.from_numpy(np.array(Image.open(spec["image"]).convert("RGB"))).float() / 127.5 - 1
    lat = vae.encode(img.permute(2, 0, 1)[None]).latent_dist.mean
    dec = vae.decode(lat).sample
np.savez(out[:-5] + ".npz", ids=ids.numpy(), text=emb.numpy(), eps=eps.numpy(), vae_latent=lat.numpy(),
         vae_decoded=dec.numpy())
with open(out, "w") as f:
    f.write("{}")
