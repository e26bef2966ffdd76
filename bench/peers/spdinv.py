"""SPDInv (Li et al., ECCV 2024; leeruibin/SPDInv): source-prompt disentangled inversion with P2P,
through ``run_SPDInv_P2P.py``'s ``P2P_inversion_and_edit`` with the defaults of its command line:
K = 25 AdamW rounds at lr 1e-3 with the MSE residual and delta 5e-6, refine + reweight (the target
blend word x2), local blend, cross-attention injection 0.8, self-attention 0.6, the source prompt as
the null embedding, "l0" proximal guidance at the 0.7 quantile and inversion guidance below t = 400.

The locedit side: ``--inversion spd --preset official --npi-null --proximal 0.7
--inversion-guidance 400`` with the same P2P settings.
"""

from __future__ import annotations

from common import Patch, Peer, locedit_p2p, p2p_controller_patches

METHODS = {"spdinv+p2p": "spd"}


def patches(size: int, device: str, steps: int = 50) -> list[Patch]:
    """Sizes only (the code picks CUDA itself when there is one); at 512 px only the model id and the
    notebook progress bar change."""
    out = [
        Patch("run_SPDInv_P2P.py", '"CompVis/stable-diffusion-v1-4"', '__import__("os").environ["LOCEDIT_PEER_MODEL"]',
              why="the model: the random-weight folder instead of the hub id"),
        *(Patch(f, "from tqdm.notebook import tqdm", "from tqdm import tqdm",
                why="progress bar: the notebook widget needs a Jupyter front end")
          for f in ("run_SPDInv_P2P.py", "P2P/SPDInv.py", "P2P/ptp_utils.py")),
    ]
    if size != 512:
        out += [
            Patch("P2P/SPDInv.py", "resize((512, 512))", f"resize(({size}, {size}))", why="input size"),
            Patch("run_SPDInv_P2P.py", "height = width = 512", f"height = width = {size}", why="image size of the edit loop"),
            *p2p_controller_patches("utils/control_utils.py", size),
        ]
    return out


PEER = Peer(
    name="spdinv",
    repository="https://github.com/leeruibin/SPDInv",
    requirements=("diffusers==0.10.0", "transformers==4.30.2", "numpy==1.26.3",
                  "Pillow==9.5.0", "tqdm==4.66.2", "safetensors"),
    adjustments=(
        ("huggingface_hub==0.19.4", "unpinned upstream; diffusers 0.10 imports cached_download, removed in 0.26"),
        ("opencv-python-headless==4.8.1.78", "environment.yaml's opencv-python 4.8.1.78 needs libGL; the headless "
                                             "build of the same release is the same cv2"),
    ),
    patches=patches,
    methods=tuple(METHODS),
    notes=("torch 2.0.1 / Python 3.9 (environment.yaml) -> the installed torch on Python 3.11; torchvision, xformers, "
           "triton, salesforce-lavis and einops are not installed: the P2P path imports none of them",
           "accelerate==0.20.3 is left out: it imports pkg_resources, which the setuptools torch 2.13 needs no "
           "longer ships; the code never imports it, and diffusers uses it only to load weights with less memory "
           "(loading is outside the measured work)"),
)

DRIVER = "spdinv_official.py"


def locedit_run(spec: dict, bundle, image):
    """The same edit with locedit; returns (edited latents, target uint8)."""
    from locedit.pipeline import EditOptions

    return locedit_p2p(spec, bundle, image, "spd", 0.8,
                       EditOptions(npi_null=True, proximal_quantile=0.7, inversion_guidance_t=400))
