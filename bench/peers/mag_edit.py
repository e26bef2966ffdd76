"""MAG-Edit (Mao et al., ACM MM 2024; HelenMao/MAG-Edit): null-text inversion, then P2P refine
(cross-attention 0.8, self-attention 0.5) with mask-based latent guidance: for the first 25 of 50
steps, 15 iterations of the token-ratio constraint at the 16x16 maps with delta 2.5 x sigma_t, and
the source outside the dilated mask for the last 15 steps. Run as ``code_tr/edit.sh`` runs
``code_tr/edit.py`` (one target word, its mask).

Their code counts those windows in absolute steps of a 50-step schedule (``if i < 25``,
``if 50-i <= 15``). At another ``--steps`` S the patches scale both to S (25 S / 50 and
15 S / 50, at least 1), and the locedit side is given the same two numbers
(``guided_steps``, ``blend_last``); at 50 steps the patches leave them alone.
"""

from __future__ import annotations

from common import Patch, Peer

METHODS = {"mag-edit": "null-text"}
MODULE = "code_tr/network.py"


def windows(steps: int) -> tuple[int, int]:
    """(guided steps, blended last steps) at ``steps``: the code's 25 and 15 of 50, scaled."""
    if steps == 50:
        return 25, 15
    return max(1, 25 * steps // 50), max(1, 15 * steps // 50)


def mask_level_patches(file: str, size: int, counts: tuple[int, int], sep: str = "", eq: str = "==") -> list[Patch]:
    """The mask sizes the MAG-Edit code base hard-codes for 512 px: the four map levels it resizes
    a mask to (8/16/32/64) and the side tests that pick one (``W==8`` ...). ``sep`` / ``eq``: the
    file's spacing (MDE-Edit's copy is reformatted: ``size=(8, 8)``, ``W == 8``)."""
    out = []
    for side in (8, 16, 32, 64):  # in this order: each new text differs from every later old one
        new = side * size // 512
        out.append(Patch(file, f"size=({side},{sep}{side})", f"size=({new},{sep}{new})", counts[0],
                         why=f"mask resized to the {side}x{side} map level (at 512 px)"))
    for side in (8, 16, 32, 64):
        new = side * size // 512
        out.append(Patch(file, f"W{eq}{side}:", f"W{eq}{new}:", counts[1],
                         why=f"the loss picks the {side}x{side} mask by the map's side (at 512 px)"))
    return out


def patches(size: int, device: str, steps: int = 50) -> list[Patch]:
    out = [Patch(MODULE, '"./model/sdm-1.4"', '__import__("os").environ["LOCEDIT_PEER_MODEL"]',
                 why="the model: the random-weight folder instead of ./model/sdm-1.4"),
           Patch(MODULE, "except AttributeError:", "except (AttributeError, ModuleNotFoundError):",
                 why="diffusers 0.11.1 raises when xformers is absent even to disable it (the default, off); the code "
                     "already catches the error older versions raise")]
    latent = size // 8
    if size != 512 or device == "cpu":
        out += [Patch(MODULE, "torch.zeros((1,1,64,64)).cuda()", f"torch.zeros((1,1,{latent},{latent})).to(device)",
                      why="the guidance mask: latent size, and the device the code picked"),
                Patch(MODULE, "torch.zeros(1,1,64,64).cuda()", f"torch.zeros(1,1,{latent},{latent}).to(device)",
                      why="the blend mask: latent size, and the device the code picked")]
    if size != 512:
        out += [
            Patch(MODULE, "resize((512, 512))", f"resize(({size}, {size}))", why="input size"),
            Patch(MODULE, "height = width = 512", f"height = width = {size}", why="image size of the edit loop"),
            Patch(MODULE, "32 ** 2", f"{size // 16} ** 2",
                  why="self-attention injected up to the latent/2 level (32x32 at 512 px)"),
            *mask_level_patches(MODULE, size, (1, 2)),
        ]
    if steps != 50:
        guided, blend = windows(steps)
        out += [
            Patch(MODULE, "NUM_DDIM_STEPS = 50", f"NUM_DDIM_STEPS = {steps}", why="the step count"),
            Patch(MODULE, "if i < 25:", f"if i < {guided}:", 2,
                  why=f"guided steps: the first 25 of 50 -> {guided} of {steps}"),
            Patch(MODULE, "if 50-i <= 15:", f"if {steps}-i <= {blend}:",
                  why=f"blended steps: the last 15 of 50 -> {blend} of {steps}"),
        ]
    return out


PEER = Peer(
    name="mag-edit",
    repository="https://github.com/HelenMao/MAG-Edit",
    requirements=("diffusers==0.11.1", "transformers==4.25.1", "huggingface-hub==0.17.3", "einops==0.8.1",
                  "Pillow==10.4.0", "tqdm==4.67.1", "safetensors"),
    adjustments=(
        ("numpy<2", "unpinned upstream; transformers 4.25 and torch-1.13-era code need numpy 1.x"),
        ("opencv-python-headless==4.10.0.84", "their opencv-python 4.10.0.84 needs libGL; the headless build of "
                                              "the same release is the same cv2"),
    ),
    patches=patches,
    methods=tuple(METHODS),
    python_path=("code_tr",),
    shims=("torchvision",),
    notes=("torch 1.13.1 -> the installed torch; xformers 0.0.16 and pyre-extensions are not installed (the code "
           "disables xformers itself and catches its absence)",
           "torchvision 0.14.1 -> a stand-in (bench/peers/shims/torchvision) with the two functions the code calls, "
           "ToTensor and save_image, written to torchvision's arithmetic: the PyPI torchvision builds for this torch "
           "link CUDA's libraries and fail to import against the CPU torch"),
)

DRIVER = "mag_edit_official.py"


def locedit_run(spec: dict, bundle, image):
    """The same edit with locedit: ``--method mag-edit --preset official`` on a null-text inversion
    (official preset), the target word's region, the two windows of :func:`windows`."""
    import dataclasses

    import numpy as np
    from PIL import Image

    from locedit import pipeline
    from locedit.inversion import INVERSIONS
    from locedit.masks import Region
    from locedit.methods.mag_edit import MAGEditOptions
    from locedit.options import apply_preset

    import torch

    guided, blend = windows(spec["steps"])
    base = MAGEditOptions()
    options = apply_preset(dataclasses.replace(base, guidance=dataclasses.replace(base.guidance, guided_steps=guided),
                                               blend_last=blend), "official")
    mask = torch.from_numpy(np.asarray(Image.open(spec["masks"][0]).convert("L"), dtype=np.float32) / 255)
    region = Region(spec["blend_words"][1], (mask > 0).float()[None, None].to(bundle.device))
    res = pipeline.edit(bundle, image, spec["source"], spec["target"], method="mag-edit", options=options,
                        inversion="null-text", inversion_options=apply_preset(INVERSIONS["null-text"].Options(), "official"),
                        regions=[region], num_steps=spec["steps"])
    picture = (res.edited[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8)
    return res.sample.latents, picture
