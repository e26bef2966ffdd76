"""Inversions: each maps (model, image latent, source prompt) to a :class:`Trajectory`.

Every entry of :data:`INVERSIONS` is ``name -> (options dataclass, function)`` with the function's
signature ``(bundle, z0, prompt, num_steps, guidance, options, progress) -> Trajectory``.
"""

from .._lazy import lazy_attributes
from ..options import Citation
from .options import (AIDIOptions, DDIMInversionOptions, DirectInversionOptions, NegativePromptOptions,
                      NMGOptions, NullTextOptions, SPDOptions)


def _later(module: str, name: str):
    """The inversion function ``name`` of ``module``, imported when it is first called."""

    def run(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module, __name__), name)(*args, **kwargs)

    run.__name__ = name
    return run


INVERSIONS = {
    "ddim": (DDIMInversionOptions, _later(".ddim", "ddim_inversion")),
    "null-text": (NullTextOptions, _later(".null_text", "null_text_inversion")),
    "npi": (NegativePromptOptions, _later(".simple", "negative_prompt_inversion")),
    "direct": (DirectInversionOptions, _later(".simple", "direct_inversion")),
    "spd": (SPDOptions, _later(".spd", "spd_inversion")),
    "nmg": (NMGOptions, _later(".nmg", "nmg_inversion")),
    "aidi": (AIDIOptions, _later(".aidi", "aidi_inversion")),
}

__getattr__ = lazy_attributes(__name__, {
    "Trajectory": ".trajectory", "ddim_inversion": ".ddim", "ddim_latents": ".ddim",
    "null_text_inversion": ".null_text", "direct_inversion": ".simple", "negative_prompt_inversion": ".simple",
    "spd_inversion": ".spd", "nmg_inversion": ".nmg", "aidi_inversion": ".aidi",
})

INVERSION_PAPERS = {
    "ddim": (Citation("Song et al., Denoising Diffusion Implicit Models, ICLR 2021", "Eq. 12, reversed (sigma = 0)",
                      "google/prompt-to-prompt (null_text_w_ptp.ipynb: ddim_loop)"),),
    "null-text": (Citation("Mokady et al., Null-text Inversion for Editing Real Images, CVPR 2023", "Alg. 1, Sec. 3.3",
                           "google/prompt-to-prompt (null_text_w_ptp.ipynb: null_optimization)"),),
    "npi": (Citation("Miyake et al., Negative-prompt Inversion, 2023", "Sec. 3 (source prompt as the null embedding)",
                     "cure-lab/PnPInversion (run_editing_p2p.py)"),),
    "direct": (Citation("Ju et al., PnP Inversion: Boosting Diffusion-based Editing with 3 Lines of Code, ICLR 2024",
                        "Alg. 1", "cure-lab/PnPInversion (models/p2p_editor.py)"),),
    "spd": (Citation("Li et al., Source Prompt Disentangled Inversion for Boosting Image Editability with "
                     "Diffusion Models, ECCV 2024", "Eq. 3-4, Alg. 1", "leeruibin/SPDInv (P2P/SPDInv.py: SPD_loop)"),),
    "nmg": (Citation("Cho et al., Noise Map Guidance: Inversion with Spatial Context for Real Image Editing, ICML 2024",
                     "noise-map guided source step (DDIM inversion underneath)",
                     "hansam95/NMG (prompt_to_prompt/pipeline_stable_diffusion_nmg.py: __call__)"),),
    "aidi": (Citation("Pan et al., Effective Real Image Editing with Accelerated Iterative Diffusion Inversion, ICCV 2023",
                      "fixed-point iteration per inversion step, as SPDInv Sec. 3.2 describes it",
                      "no code released; SPDInv's description"),),
}

__all__ = [
    "INVERSION_PAPERS",
    "INVERSIONS",
    "AIDIOptions",
    "DDIMInversionOptions",
    "DirectInversionOptions",
    "NMGOptions",
    "NegativePromptOptions",
    "NullTextOptions",
    "SPDOptions",
    "Trajectory",
    "ddim_inversion",
    "ddim_latents",
    "direct_inversion",
    "negative_prompt_inversion",
    "null_text_inversion",
    "spd_inversion",
]
