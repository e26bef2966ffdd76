"""MDE-Edit (Zhu et al., 2025; RainbowZhuu/MDE-Edit): null-text inversion, then P2P refine (0.8 /
0.5) with latent guidance for the first 20 of 50 steps, 15 iterations each: the object alignment
loss (its quartic form, label smoothing 0.1, on 16x16 logits resized to 32x32) on the object word
inside its mask, plus 1.5 x the spatial-ratio constraint on the attribute word inside the
attribute's mask, step 1 x sigma_t; the source outside the dilated masks for the last 15 steps.
Run as ``code/edit_multi.sh`` runs ``code/edit.py`` (one object, one attribute).

Plain bugs of their code are patched (``docs/conformance.md``: locedit does not reproduce them):
the OAL softmax runs over the heads axis (every value becomes 1/heads and the OAL gradient is
exactly zero; patched to the token axis); two calls miss an argument (``edit.py`` reads
``args.mask_path``, which its parser does not define; ``compute_ca_ccl`` is called without its
``name``, a TypeError), both given the value their callee ignores; and ``edit.py`` hands each
attribute word the whole ``--ccl_mask`` list as its mask path (PIL cannot open a list), patched to
one mask per word. Without the last three, ``edit_multi.sh`` stops before the first step.

Windows at other ``--steps``: as for MAG-Edit (:func:`mag_edit.windows`), the code's 20 (its
``--optimization_step``), 25 and 15 of 50 are scaled to the step count.
"""

from __future__ import annotations

from common import Patch, Peer
from mag_edit import mask_level_patches

METHODS = {"mde-edit": "null-text"}
NET, OAL, EDIT = "code/network.py", "code/oal_utils.py", "code/edit.py"


def windows(steps: int) -> tuple[int, int, int]:
    """(guided steps, the code's ``i < 25`` bound, blended last steps) at ``steps``."""
    if steps == 50:
        return 20, 25, 15
    return max(1, 20 * steps // 50), max(1, 25 * steps // 50), max(1, 15 * steps // 50)


def spec(steps: int) -> dict:
    """The run's inputs beyond the shared ones: one object (the first box) and one attribute (the
    second box), as edit_multi.sh has them, and the guided steps (their --optimization_step)."""
    return {"source": "a cat sitting on the grass", "target": "a dog sitting on the green grass",
            "object": "dog", "attribute": "green", "guided_steps": windows(steps)[0]}


def patches(size: int, device: str, steps: int = 50) -> list[Patch]:
    out = [
        Patch(NET, '"CompVis/stable-diffusion-v1-4"', '__import__("os").environ["LOCEDIT_PEER_MODEL"]',
              why="the model: the random-weight folder instead of the hub id"),
        Patch(NET, "softmax(1).mean((0, 1))", "softmax(2).mean((0, 1))",
              why="bug: the OAL softmax over the heads axis (dim 1 of layers x heads x tokens x pixels) makes every "
                  "value 1/heads and the OAL gradient zero; over the tokens, as the paper's Eq. 4 and locedit"),
        Patch(EDIT, "adj_mask=args.mask_path", "adj_mask=None",
              why="bug: the parser defines no --mask_path (AttributeError); the controller ignores adj_mask"),
        Patch(NET, "controller.word, controller.prompt)", "controller.word, controller.prompt, None)",
              why="bug: compute_ca_ccl is called without its name argument (TypeError); it never uses it"),
        Patch(EDIT, "[[args.ccl_mask for p in args.ccl_word]", "[[args.ccl_mask[k] for k, p in enumerate(args.ccl_word)]",
              why="bug: --ccl_mask takes a list (nargs='+'), so each word got the whole list as its mask path "
                  "(PIL cannot open a list); each attribute word gets its own mask"),
    ]
    latent = size // 8
    if size != 512 or device == "cpu":
        out += [Patch(NET, "torch.zeros((1, 1, 64, 64)).cuda()", f"torch.zeros((1, 1, {latent}, {latent})).to(device)",
                      why="the attribute mask of the update: latent size, and the device the code picked"),
                Patch(NET, "torch.zeros(1,1,64,64).cuda()", f"torch.zeros(1,1,{latent},{latent}).to(device)",
                      why="the attribute mask of the blend: latent size, and the device the code picked")]
    if size != 512:
        m, big = size // 32, size // 16  # the 16x16 map level and the 32x32 OAL resolution at 512 px
        out += [
            Patch(NET, "resize((512, 512))", f"resize(({size}, {size}))", why="input size"),
            Patch(NET, "height = width = 512", f"height = width = {size}", why="image size of the edit loop"),
            Patch(NET, "32 ** 2", f"{big} ** 2", why="self-attention injected up to the latent/2 level (32x32 at 512 px)"),
            *mask_level_patches(NET, size, (1, 1), sep=" ", eq=" == "),
            Patch(NET, "mask_image.resize((64, 64)", f"mask_image.resize(({latent}, {latent})",
                  why="the object mask of the update and blend: latent size"),
            Patch(NET, "32, mode='area')", f"{big}, mode='area')", why="OAL targets at 32x32 (at 512 px)"),
            Patch(NET, "T.Resize(16, Image.BILINEAR)", f"T.Resize({m}, Image.BILINEAR)",
                  why="eDiff-I masks at the 16x16 level (computed, unused at --ediffi_coeff 0)"),
            Patch(OAL, "16 * 16", f"{m} * {m}", why="the 16x16 map level"),
            Patch(OAL, "reshape(8, -1, 16, 16)", f"reshape(8, -1, {m}, {m})", why="the 16x16 map level (8 heads)"),
            Patch(OAL, "8 * 8", f"{m // 2} * {m // 2}", why="the 8x8 map level"),
            Patch(OAL, "reshape(8, -1, 8, 8)", f"reshape(8, -1, {m // 2}, {m // 2})", why="the 8x8 map level (8 heads)"),
            Patch(OAL, "T.Resize(32)", f"T.Resize({big})", 2, why="OAL maps resized to 32x32 (at 512 px)"),
            Patch(EDIT, "target_size=(512, 512)", f"target_size=({size}, {size})", why="object mask size"),
            Patch(EDIT, "np.zeros((512, 512))", f"np.zeros(({size}, {size}))", why="object mask size"),
        ]
    if steps != 50:
        _, bound, blend = windows(steps)
        out += [
            Patch(NET, "NUM_DDIM_STEPS = 50", f"NUM_DDIM_STEPS = {steps}", why="the step count"),
            Patch(NET, "if i < 25:", f"if i < {bound}:", why=f"guided steps' bound: 25 of 50 -> {bound} of {steps}"),
            Patch(NET, "if 50 - i <= 15:", f"if {steps} - i <= {blend}:",
                  why=f"blended steps: the last 15 of 50 -> {blend} of {steps}"),
        ]
    return out


PEER = Peer(
    name="mde-edit",
    repository="https://github.com/RainbowZhuu/MDE-Edit",
    requirements=("diffusers==0.21.3", "transformers==4.30.2", "numpy==1.25.1", "Pillow==9.5.0", "tqdm==4.65.0",
                  "ipython==8.14.0", "safetensors"),
    adjustments=(
        ("huggingface_hub==0.19.4", "unpinned upstream; the release of diffusers 0.21's time (cached_download, "
                                    "removed in 0.26)"),
        ("einops", "imported by the code, missing from requirements.txt"),
        ("opencv-python-headless==4.6.0.66", "their opencv_python 4.6.0.66 needs libGL; the headless build of the same "
                                             "release is the same cv2"),
    ),
    patches=patches,
    methods=tuple(METHODS),
    python_path=("code",),
    shims=("torchvision",),
    notes=("torch 2.0.1 -> the installed torch; torchvision 0.15.2 -> the stand-in of bench/peers/shims (ToTensor, "
           "save_image, and Resize on tensors as 0.15 computes it: bilinear, no antialiasing, half cast to float "
           "and back)",
           "accelerate, matplotlib, seaborn, pytorch_lightning, hydra-core, pyyaml and invisible-watermark are not "
           "installed: the editing path imports none of them (accelerate only lowers diffusers' loading memory)"),
)

DRIVER = "mde_edit_official.py"


def locedit_run(spec: dict, bundle, image):
    """The same edit: ``--method mde-edit --preset official`` on a null-text inversion (official
    preset), the object region and the attribute region, the windows of :func:`windows`."""
    import dataclasses

    import numpy as np
    import torch
    from PIL import Image

    from locedit import pipeline
    from locedit.inversion import INVERSIONS
    from locedit.masks import Region
    from locedit.methods.mde_edit import MDEEditOptions
    from locedit.options import apply_preset

    guided, _, blend = windows(spec["steps"])
    base = MDEEditOptions()
    options = apply_preset(dataclasses.replace(base, guidance=dataclasses.replace(base.guidance, guided_steps=guided),
                                               blend_last=blend), "official")

    def box(path):
        m = torch.from_numpy(np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255)
        return (m > 0.5).float()[None, None].to(bundle.device)

    res = pipeline.edit(bundle, image, spec["source"], spec["target"], method="mde-edit", options=options,
                        inversion="null-text", inversion_options=apply_preset(INVERSIONS["null-text"].Options(), "official"),
                        regions=[Region(spec["object"], box(spec["masks"][0]))],
                        attributes=[Region(spec["attribute"], box(spec["masks"][1]))], num_steps=spec["steps"])
    picture = (res.edited[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    return res.sample.latents, picture
