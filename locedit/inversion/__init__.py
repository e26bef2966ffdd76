"""Inversions: each maps (model, image latent, source prompt) to a :class:`Trajectory`.

Every entry of :data:`INVERSIONS` is an :class:`Inversion` (the registries' one shape,
:class:`locedit.registry.Entry`) whose ``run`` has the signature
``(bundle, z0, prompt, num_steps, guidance, options, progress) -> Trajectory``.
"""

from .._lazy import lazy_attributes
from ..options import Citation
from ..registry import Entry
from .options import (AIDIOptions, DDIMInversionOptions, DirectInversionOptions, NegativePromptOptions,
                      NMGOptions, NullTextOptions, SPDOptions)


class Inversion(Entry):
    """An inversion: :meth:`run` maps (model, image latent, source prompt) to a :class:`Trajectory`."""

    @staticmethod
    def run(bundle, z0, prompt: str, num_steps: int, guidance: float, options, progress=None):
        raise NotImplementedError


def _runs(module: str, name: str):
    """The inversion function ``name`` of ``module`` as an entry's ``run``, imported when first called
    (the registry stays light: the command line reads it before torch is imported)."""

    def run(*args, **kwargs):
        import importlib

        return getattr(importlib.import_module(module, __name__), name)(*args, **kwargs)

    run.__name__ = name
    return staticmethod(run)


class DDIMInversion(Inversion):
    name, Options = "ddim", DDIMInversionOptions
    summary = "DDIM inversion; the null embedding in the unconditional rows"
    papers = (Citation("Song et al., Denoising Diffusion Implicit Models, ICLR 2021", "Eq. 12, reversed (sigma = 0)",
                       "google/prompt-to-prompt (null_text_w_ptp.ipynb: ddim_loop)"),)
    run = _runs(".ddim", "ddim_inversion")


class NullTextInversion(Inversion):
    name, Options = "null-text", NullTextOptions
    summary = "null-text inversion: one optimised null embedding per step"
    papers = (Citation("Mokady et al., Null-text Inversion for Editing Real Images, CVPR 2023", "Alg. 1, Sec. 3.3",
                       "google/prompt-to-prompt (null_text_w_ptp.ipynb: null_optimization)"),)
    run = _runs(".null_text", "null_text_inversion")


class NegativePromptInversion(Inversion):
    name, Options = "npi", NegativePromptOptions
    summary = "negative-prompt inversion: the source prompt replaces the null embedding"
    papers = (Citation("Miyake et al., Negative-prompt Inversion, 2023", "Sec. 3 (source prompt as the null embedding)",
                       "cure-lab/PnPInversion (run_editing_p2p.py)"),)
    run = _runs(".simple", "negative_prompt_inversion")


class DirectInversion(Inversion):
    name, Options = "direct", DirectInversionOptions
    summary = "direct inversion: the source branch pinned to the DDIM latents"
    papers = (Citation("Ju et al., PnP Inversion: Boosting Diffusion-based Editing with 3 Lines of Code, ICLR 2024",
                       "Alg. 1", "cure-lab/PnPInversion (models/p2p_editor.py)"),)
    run = _runs(".simple", "direct_inversion")


class SPDInversion(Inversion):
    name, Options = "spd", SPDOptions
    summary = "SPDInv: each inversion step a fixed point found by gradient descent"
    papers = (Citation("Li et al., Source Prompt Disentangled Inversion for Boosting Image Editability with "
                       "Diffusion Models, ECCV 2024", "Eq. 3-4, Alg. 1", "leeruibin/SPDInv (P2P/SPDInv.py: SPD_loop)"),)
    run = _runs(".spd", "spd_inversion")


class NMGInversion(Inversion):
    name, Options = "nmg", NMGOptions
    summary = "Noise Map Guidance: DDIM inversion whose source row is guided towards it at edit time"
    papers = (Citation("Cho et al., Noise Map Guidance: Inversion with Spatial Context for Real Image Editing, ICML 2024",
                       "noise-map guided source step (DDIM inversion underneath)",
                       "hansam95/NMG (prompt_to_prompt/pipeline_stable_diffusion_nmg.py: __call__)"),)
    run = _runs(".nmg", "nmg_inversion")


class AIDIInversion(Inversion):
    name, Options = "aidi", AIDIOptions
    summary = "AIDI: fixed-point iteration per inversion step"
    papers = (Citation("Pan et al., Effective Real Image Editing with Accelerated Iterative Diffusion Inversion, ICCV 2023",
                       "fixed-point iteration per inversion step, as SPDInv Sec. 3.2 describes it",
                       "no code released; SPDInv's description"),)
    run = _runs(".aidi", "aidi_inversion")


INVERSIONS: dict[str, type[Inversion]] = {
    "ddim": DDIMInversion,
    "null-text": NullTextInversion,
    "npi": NegativePromptInversion,
    "direct": DirectInversion,
    "spd": SPDInversion,
    "nmg": NMGInversion,
    "aidi": AIDIInversion,
}


def uncond_of(takes_inversion: bool, inversion: str | None, trajectory_uncond: str | None = None,
              npi_null: bool = False) -> str | None:
    """What the edit's unconditional branch will hold: "null" (the empty prompt's embedding),
    "learned" (null-text's), "source" (NPI's, or ``npi_null``), or None for a method that makes its
    own inversion; ``trajectory_uncond``: a given trajectory's."""
    if trajectory_uncond is not None:
        uncond = trajectory_uncond
    elif takes_inversion and inversion in INVERSIONS:
        uncond = getattr(INVERSIONS[inversion].Options, "UNCOND", "null")
    else:
        uncond = None
    return "source" if npi_null else uncond


__getattr__ = lazy_attributes(__name__, {
    "Trajectory": ".trajectory", "ddim_inversion": ".ddim", "ddim_latents": ".ddim",
    "null_text_inversion": ".null_text", "direct_inversion": ".simple", "negative_prompt_inversion": ".simple",
    "spd_inversion": ".spd", "nmg_inversion": ".nmg", "aidi_inversion": ".aidi",
})

__all__ = [
    "INVERSIONS",
    "Inversion",
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
