"""PnPInversion (Ju et al., ICLR 2024; cure-lab/PnPInversion): DDIM, null-text, negative-prompt and
direct inversion, each with Prompt-to-Prompt, through its ``models/p2p_editor.py`` as its
``run_editing_p2p.py`` runs PIE-Bench: refine + reweight (the target blend word x2), local blend on
the blend words, cross-attention injection 0.4, self-attention 0.6, guidance 7.5, seed 1234.

The locedit side runs the same edit with ``--preset official`` options set to those values.
"""

from __future__ import annotations

from common import Patch, Peer, locedit_p2p, p2p_controller_patches

METHODS = {  # their method name -> locedit inversion
    "ddim+p2p": "ddim",
    "null-text-inversion+p2p": "null-text",
    "negative-prompt-inversion+p2p": "npi",
    "directinversion+p2p": "direct",
}


def patches(size: int, device: str, steps: int = 50) -> list[Patch]:
    """Sizes and devices only. At 512 px on CUDA only the model id changes."""
    out = [Patch("models/p2p_editor.py", '"CompVis/stable-diffusion-v1-4"', '__import__("os").environ["LOCEDIT_PEER_MODEL"]',
                 why="the model: the random-weight folder instead of the hub id")]
    if size != 512:
        out += [
            Patch("utils/utils.py", "resize((512, 512))", f"resize(({size}, {size}))", why="input size"),
            Patch("utils/utils.py", "target_size=[512,512]", f"target_size=[{size},{size}]",
                  why="size of the prompt panel the editor concatenates with the images"),
            Patch("models/p2p/p2p_guidance_forward.py", "height = width = 512", f"height = width = {size}", 4,
                  why="image size of the sampling loops"),
            Patch("models/p2p/proximal_guidance_forward.py", "height = width = 512", f"height = width = {size}", 1,
                  why="image size of the NPI sampling loop"),
            *p2p_controller_patches("models/p2p/attention_control.py", size),
        ]
    if device == "cpu":
        out.append(Patch("models/p2p/attention_control.py", 'device="cuda"', 'device="cpu"', 6,
                         why="controller defaults put their tensors on CUDA"))
    return out


PEER = Peer(
    name="pnpinversion",
    repository="https://github.com/cure-lab/PnPInversion",
    requirements=("diffusers==0.10.0", "ftfy", "safetensors"),
    adjustments=(
        ("transformers==4.29.2", "unpinned upstream; the release of diffusers 0.10's time that imports here"),
        ("huggingface_hub==0.19.4", "diffusers 0.10 imports cached_download, removed in huggingface_hub 0.26"),
        ("numpy<2", "transformers 4.29 and the code's np.fromstring/tostring need numpy 1.x"),
        ("matplotlib<3.8", "unpinned upstream; txt_draw uses FigureCanvasAgg.tostring_argb, removed in 3.8+"),
        ("Pillow<10", "unpinned upstream; txt_draw uses Image.ANTIALIAS, removed in Pillow 10"),
    ),
    patches=patches,
    methods=tuple(METHODS),
    notes=("opencv-python, ipywidgets and accelerate (environment/p2p_requirements.txt) are not installed: "
           "the P2P editor imports none of them",),
)

DRIVER = "pnpinversion_official.py"


def locedit_run(spec: dict, bundle, image):
    """The same edit with locedit: P2P reweight (refine + the target blend word x2), blend words,
    cross 0.4, self 0.6, the inversion's official preset; returns (edited latents, target uint8)."""
    return locedit_p2p(spec, bundle, image, METHODS[spec["method"]], 0.4)
