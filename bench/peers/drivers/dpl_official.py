"""Runs LocInv's three steps (wangkai930418/DPL: ``_2_DDIM_inv.py``, ``_3_dpl_seg_inv.py``,
``_4_image_edit.py``) in its environment on the side-by-side inputs, and records :mod:`measure`'s
figures.

The scripts cannot run as they are here: ``_2_DDIM_inv.py`` tags the caption with NLTK (its data is
downloaded at run time) and the other two import ``_utils/ptp_utils.py``, which imports IPython and
OpenCV for figures. So this driver makes the scripts' own calls of their three pipeline classes
(``pipelines/``, from the adapted copy), with the scripts' arguments and the lines that prepare
them (placeholder tokens, caption, prior), in the scripts' order, and leaves out what feeds
nothing into the edit: the reconstructions, figures, clustering, pickles and IoU files.

One line differs from ``_3_dpl_seg_inv.py``, a plain bug that bench/peers/dpl.py describes: the
placeholder starts from the initializer word's token (``tokenizer.encode(word)``), not from the
bare vocabulary entry that ``tokenizer.encode([word, ...])`` returns.

The three scripts each load the model folder; here the three pipelines are built once on the same
modules before the clock starts (loading is outside the measured work on both sides). Observation
only: ``decode_latents`` of the edit pipeline is wrapped to keep the latents it decodes, and a
pre-hook counts UNet calls.
"""

import sys

import measure
import numpy as np
import torch
from PIL import Image

spec, out = measure.args()
torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
sys.path.insert(0, spec["src"])
from diffusers import DDIMScheduler  # noqa: E402
from pipelines.ddim_pipeline import StableDiffusionDDIMInvPipeline  # noqa: E402  (theirs, adapted copy)
from pipelines.edit_pipeline import StableDiffusion_EditPipeline  # noqa: E402
from pipelines.scheduler_inv import DDIMInverseScheduler  # noqa: E402
from pipelines.seg_null_textinv_pipeline import StableDiffusion_SegPipeline  # noqa: E402

device, size, steps = spec["device"], spec["size"], spec["steps"]
maps = size // 32  # their attn_res 16 at 512 px: the latent / 4 level
inv = StableDiffusionDDIMInvPipeline.from_pretrained(spec["model"], torch_dtype=torch.float32)
inv.scheduler = DDIMScheduler.from_config(inv.scheduler.config)
inv.inverse_scheduler = DDIMInverseScheduler.from_config(inv.scheduler.config)
inv.to(device)
shared = dict(vae=inv.vae, text_encoder=inv.text_encoder, tokenizer=inv.tokenizer, unet=inv.unet,
              feature_extractor=None, safety_checker=None, inverse_scheduler=None, caption_generator=None,
              caption_processor=None, requires_safety_checker=False)
seg = StableDiffusion_SegPipeline(scheduler=DDIMScheduler.from_config(inv.scheduler.config), **shared)
edit = StableDiffusion_EditPipeline(scheduler=DDIMScheduler.from_config(inv.scheduler.config), **shared)
for p in (inv, seg, edit):
    p.set_progress_bar_config(disable=True)
decoded = []
_decode = edit.decode_latents


def recording_decode(latents):
    image = _decode(latents)  # (B, H, W, 3) numpy in [0, 1]
    decoded.append((latents.detach().clone(), image))
    return image


edit.decode_latents = recording_decode


def read_segfile(path):
    """``_3_dpl_seg_inv.py``'s reader, at this size's map level."""
    data = np.asarray(Image.open(path).resize((maps, maps))).astype(bool)
    if len(data.shape) > 2:
        data = data[:, :, -1]
    return torch.from_numpy(data).to(torch.float32).to(device).unsqueeze(0)


def caption_with_placeholders(prompt, placeholders, initializers):
    """The scripts' caption rule: each initializer word found in the caption is replaced by its
    placeholder; its token index is its word index + 1."""
    words, indices = prompt.strip().split(" "), []
    for ph, init in zip(placeholders, initializers):
        if init in words:
            k = words.index(init)
            words[k] = ph
            indices.append(k + 1)
    return " ".join(words), indices


placeholders, initializers = [spec["placeholder"]], [spec["initializer"]]
prior_path = spec["prior"]  # bench/peers/dpl.py's inputs(): the noun's segmentation prior
with measure.Meter(inv.unet, device, [inv.unet, inv.vae, inv.text_encoder]) as meter:
    # 1. _2_DDIM_inv.py (the caption given on the command line)
    raw_image = Image.open(spec["image"]).convert("RGB").resize((size, size))
    generator = torch.manual_seed(0)
    all_latents, _, _, _ = inv(spec["source"], num_inference_steps=steps, image=raw_image, generator=generator)
    inv_latents = [z.cpu().to(device) for z in all_latents]  # pickled there, read back by the next script
    del all_latents

    # 2. _3_dpl_seg_inv.py with the released seg runs' arguments
    tokenizer, text_encoder = seg.tokenizer, seg.text_encoder
    tokenizer.add_tokens(placeholders)
    initializer_token_id = [tokenizer.encode(w, add_special_tokens=False)[0] for w in initializers]  # the bug fix
    placeholder_token_id = tokenizer.convert_tokens_to_ids(placeholders)
    text_encoder.resize_token_embeddings(len(tokenizer))
    token_embeds = text_encoder.get_input_embeddings().weight.data
    index_no_updates = torch.ones(len(tokenizer), dtype=bool)
    for k in range(len(placeholder_token_id)):
        token_embeds[placeholder_token_id[k]] = token_embeds[initializer_token_id[k]]
        index_no_updates[placeholder_token_id[k]] = False
    text_encoder.text_model.encoder.requires_grad_(False)
    text_encoder.text_model.final_layer_norm.requires_grad_(False)
    text_encoder.text_model.embeddings.position_embedding.requires_grad_(False)
    caption, indices = caption_with_placeholders(spec["source"], placeholders, initializers)
    seg_maps = [read_segfile(prior_path)]
    _, _, uncond_list, cond_list = seg(
        caption, num_inference_steps=steps, latents=inv_latents[-1], guidance_scale=7.5, all_latents=inv_latents,
        print_freq=10 ** 6, null_inner_steps=spec["null_inner"], attn_inner_steps=spec["inner"],
        placeholder_token_id=placeholder_token_id, index_no_updates=index_no_updates, token_indices=indices,
        adj_indices_to_alter=None, alpha_cos=50.0, alpha_iou=25.0, alpha_kl=25.0, alpha_sim=25.0, alpha_adj=50.0,
        beta_cos=0.7, beta_iou=0.7, beta_kl=1.0, beta_sim=0.9, beta_adj=0.1, lam_cos=1.0, lam_iou=1.0, lam_kl=0.0,
        lam_sim=0.0, lam_adj=0.0, attn_res=maps, smooth_op=True, softmax_op=True, seg_maps=seg_maps,
        loss_type="cosine")

    # 3. _4_image_edit.py --replace (the prompts given on the command line)
    tokenizer.add_tokens(placeholders)
    placeholder_token_id = tokenizer.convert_tokens_to_ids(placeholders)
    text_encoder.resize_token_embeddings(len(tokenizer))
    token_embeds = text_encoder.get_input_embeddings().weight.data
    for k in range(len(placeholder_token_id)):
        token_embeds[placeholder_token_id[k]] = cond_list[0][k]
    target = spec["target"]
    edit(caption, target, num_inference_steps=steps, latents=inv_latents[-1], guidance_scale=7.5,
         all_latents=inv_latents, placeholder_token_id=placeholder_token_id, index_no_updates=index_no_updates,
         token_indices=indices, cond_embeddings_list=cond_list, uncond_embeddings_list=uncond_list, refine=False,
         replace=True, local=False, mapper=None, alphas=None, cross_replace_steps=spec["cross_steps"],
         self_replace_steps=spec["self_steps"], indices_to_amplify=None, amplify_scale=[5.0, 1.0], indices_local=None)
latents, image = decoded[-1]
picture = (image[1] * 255).round().astype(np.uint8)  # numpy_to_pil rounds
extra = {"token_vectors": torch.cat([c[:1] for c in cond_list]), "null_embeddings": torch.cat(uncond_list),
         "inversion_latents": torch.cat(inv_latents)}
measure.write(out, meter.figures(), latents, picture, extra)
