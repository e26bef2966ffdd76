"""LocInv (Tang et al., CVPR 2024 AI4CC workshop; wangkai930418/DPL): DDIM inversion, per-step
noun-token learning from a segmentation prior with null-text per step, then Prompt-to-Prompt with
the learned tokens. The repository runs it as three scripts:

1. ``_2_DDIM_inv.py``: DDIM inversion (``StableDiffusionDDIMInvPipeline`` with the repository's
   ``DDIMInverseScheduler``, guidance 1), the VAE posterior *sampled* with ``torch.manual_seed(0)``;
   the rest of the script (reconstruction, clustering, NLTK tagging, figures) feeds nothing later;
2. ``_3_dpl_seg_inv.py``: the noun replaced by a placeholder token initialised from the noun, the
   prior read at the map size (``read_segfile``), ``StableDiffusion_SegPipeline`` with the
   arguments of the released seg runs (``bash_scripts/abs_folder/*.sh`` of commit 233afcb: 31 token
   and 31 null-text iterations, cos 50/0.7/1, IoU 25/0.7/1, KL and adjective weights 0);
3. ``_4_image_edit.py``: ``StableDiffusion_EditPipeline`` with ``--replace`` (the released edit
   scripts' word swap), cross-attention replaced for the first 40 of 50 steps and self-attention
   for the first 20 (the script's defaults; scaled to ``--steps`` as 4/5 and 2/5 of it).

The driver (``drivers/dpl_official.py``) makes the scripts' calls of the three pipelines in one
process, with their arguments, and leaves out what does not feed the edit (reconstructions,
figures, IoU files). The locedit side is ``--method locinv --preset official`` (``nti_mode
restart``, the posterior sampled with seed 0, the PIL-resized prior, self-attention injected at
16x16 and coarser), P2P replace with cross 0.8 and self 0.4.

Two bugs are fixed on the official side, and not reproduced by locedit:
- the placeholder is initialised from ``tokenizer.encode(args.initializer_token)``, and
  ``initializer_token`` is a list, which the tokenizer converts entry by entry *without* BPE
  (``convert_tokens_to_ids``): the row of the bare vocabulary entry "cat" (CLIP's sub-word piece,
  not the word "cat</w>"; the unknown token where there is no such entry, as in the random
  model's vocabulary) instead of the noun's own embedding, which the comment above the line and
  the paper state (the driver makes this line itself, with ``encode(word)``);
- the editor's attention store advances its step counter in the call of a forward's last
  attention layer *before* that layer tests its window, so the last cross-attention layer misses
  the window's last step (a patch of ``pipelines/edit_pipeline.py``, below).
"""

from __future__ import annotations

from common import Patch, Peer

METHODS = {"locinv-seg": "locinv"}
SEG = "pipelines/seg_null_textinv_pipeline.py"
EDIT = "pipelines/edit_pipeline.py"
DDIM = "pipelines/ddim_pipeline.py"


def windows(steps: int) -> tuple[int, int]:
    """(cross-attention steps, self-attention steps) of ``_4_image_edit.py``: 40 and 20 of 50,
    i.e. 0.8 and 0.4 of the steps, counted as ``int(fraction * steps)``."""
    return int(0.8 * steps), int(0.4 * steps)


def patches(size: int, device: str, steps: int = 50) -> list[Patch]:
    """Devices and sizes in the three pipeline modules the driver imports (the scripts' own lines
    are made by the driver, see its docstring)."""
    out = [
        Patch(EDIT, "        if is_cross and self.curr_step_index < cross_replace_steps:",
              "        if is_cross and self.curr_step_index - (self.cur_att_layer == 0) < cross_replace_steps:", 2,
              why="bug: the store advances its step counter in the call of the forward's last attention layer "
                  "*before* that layer tests the window, so the last cross-attention layer (the finest up block's) "
                  "is left out of the window's last step (of every step at 1 step); the test reads the step the "
                  "call belongs to"),
        Patch(EDIT, "        elif (not is_cross) and self.curr_step_index < self_replace_steps:",
              "        elif (not is_cross) and self.curr_step_index - (self.cur_att_layer == 0) < self_replace_steps:", 2,
              why="the same for the self-attention window (no effect on SD, whose last layer is a cross-attention "
                  "one)"),
    ]
    if device == "cpu":
        out += [
            Patch(SEG, "torch.Tensor([0.0]).cuda()", "torch.Tensor([0.0])", 5,
                  why="the losses switched off by a zero weight are CUDA tensors"),
            Patch(EDIT, "uncond_embeddings_list[i].cuda()", "uncond_embeddings_list[i]", 2,
                  why="the edit moves the null embeddings to CUDA"),
            Patch(EDIT, "encoder_hidden_states.cuda()", "encoder_hidden_states", 2,
                  why="the edit moves the source text embedding to CUDA"),
            Patch(DDIM, "def get_average_attention(self, device='cuda'):",
                  "def get_average_attention(self, device='cpu'):",
                  why="the inversion's attention store averages on CUDA"),
        ]
    if size != 512:
        maps = size // 32
        out += [
            Patch(EDIT, "if H <= 256:", f"if H <= {maps * maps}:", 3,
                  why="self-attention replaced at maps of 16x16 and coarser (latent / 4); one of the three is commented out"),
            Patch(EDIT, "size=(64,64)", f"size=({size // 8},{size // 8})",
                  why="latent size of the local-blend mask (not used by --replace)"),
        ]
    return out


PEER = Peer(
    name="dpl",
    repository="https://github.com/wangkai930418/DPL",
    requirements=("transformers==4.30.2", "huggingface-hub==0.16.2", "numpy==1.25.0",
                  "Pillow==9.4.0", "tqdm==4.65.0", "safetensors==0.3.1", "tokenizers==0.13.3"),
    adjustments=(
        ("diffusers==0.19.3", "torch2.yml pins 0.21.0, which no longer has diffusers.models.cross_attention, imported "
                              "by every pipeline of the repository (removed in 0.20); 0.19.3 is the last release "
                              "with it"),
    ),
    patches=patches,
    methods=tuple(METHODS),
    notes=("torch 2.0.1 (torch2.yml, conda, CUDA 11.7) -> the installed torch on the same Python 3.11; the pip "
           "section's pins above are theirs",
           "not installed: accelerate 0.20.3 (imports pkg_resources, which the setuptools this torch needs no longer "
           "ships; diffusers uses it only to load weights with less memory, outside the measured work), "
           "torchvision, xformers, deepspeed, datasets, opencv, scikit-learn, matplotlib and NLTK: the three "
           "pipelines import none of them (the scripts' figures, clustering and NLTK tagging do, and feed nothing "
           "into the edit)",
           "the driver makes the three scripts' pipeline calls itself (the scripts import IPython and OpenCV for "
           "figures, and _2_DDIM_inv.py downloads NLTK data); its one line that differs from _3_dpl_seg_inv.py is a "
           "bug fix: the placeholder starts from tokenizer.encode(word), the initializer word's token, where "
           "tokenizer.encode([word, ...]) converts each word as a bare vocabulary entry without BPE (CLIP's "
           "sub-word piece 'cat', not 'cat</w>'; the unknown token when absent, as in the random model's "
           "vocabulary)"),
)

DRIVER = "dpl_official.py"


def prior_path(image: str) -> str:
    """The noun's segmentation prior beside the input image (``-prior.png``, written once): a disc
    of radius size/16 centred at (3/16, 3/16) of the image. Small on purpose: Pillow's bicubic
    resize (the code's ``read_segfile``) marks every map cell that the filter reaches, which for
    either object of the scene is every cell of the 2x2 maps at 64 px; a prior that covers the
    whole map meets both loss thresholds at once and no token is ever learned."""
    import os

    import numpy as np
    from PIL import Image

    path = image[:-4] + "-prior.png"
    if not os.path.exists(path):
        size = Image.open(image).size[0]
        yy, xx = np.mgrid[:size, :size] + 0.5
        c, r = 3 * size / 16, size / 16
        Image.fromarray(((((xx - c) ** 2 + (yy - c) ** 2) <= r * r) * 255).astype(np.uint8)).save(path)
    return path


def inputs(image) -> dict:
    """Files this peer adds to the shared inputs (made once, before any run)."""
    return {"prior": prior_path(str(image))}


def spec(steps: int) -> dict:
    cross, self_ = windows(steps)
    return {"cross_steps": cross, "self_steps": self_, "placeholder": "<cat-toy>", "initializer": "cat",
            "inner": 31, "null_inner": 31}


def locedit_run(spec: dict, bundle, image):
    """The same edit with locedit: ``--method locinv --preset official`` with the source noun's
    prior, P2P replace with cross 0.8 and self 0.4. Returns (edited latents, target uint8, the
    learned token vectors and null embeddings)."""
    import dataclasses

    import numpy as np
    import torch
    from PIL import Image

    from locedit import pipeline
    from locedit.masks import Region
    from locedit.methods.locinv import LocInvEditOptions
    from locedit.options import apply_preset

    base = LocInvEditOptions()
    options = apply_preset(dataclasses.replace(base, p2p=dataclasses.replace(base.p2p, mode="replace")), "official")
    options = dataclasses.replace(options, locinv=dataclasses.replace(options.locinv, max_inner=spec["inner"],
                                                                      restart_iterations=spec["null_inner"]))
    mask = np.asarray(Image.open(spec["prior"]).convert("L"), dtype=np.float32) / 255
    region = Region(spec["initializer"], torch.from_numpy(mask)[None, None].to(bundle.device))
    res = pipeline.edit(bundle, image, spec["source"], spec["target"], method="locinv", options=options,
                        regions=[region], num_steps=spec["steps"])
    # rounded, as their pipeline's numpy_to_pil
    picture = np.round(res.edited[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    traj = res.trajectory
    extra = {"token_vectors": traj.token_vectors[spec["initializer"]][:, 0],
             "null_embeddings": torch.cat(traj.null_embeddings), "inversion_latents": torch.cat(traj.latents)}
    return res.sample.latents, picture, extra
