"""The instruction-editing methods as a registry, read by ``locedit instruct``, the bench and
``locedit methods``: InstructPix2Pix alone and LIME on top of it. Light: each ``run`` imports its
code when it is called."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from ..options import Citation
from ..registry import Entry
from .options import IP2PEditOptions, LIMEOptions

if TYPE_CHECKING:
    import torch

IP2P_PAPER = Citation("Brooks et al., InstructPix2Pix: Learning to Follow Image Editing Instructions, CVPR 2023",
                      "Eq. 3 (two guidance scales; LIME Eq. 2)", "timothybrooks/instruct-pix2pix")
LIME_PAPER = Citation("Simsar et al., LIME: Localized Image Editing via Attention Regularization in Diffusion "
                      "Models, 2024", "Sec. 3.1 (localisation), Eq. 3 (attention regularisation)",
                      "enisimsar/LIME (pipeline.py, utils.py, lime.ipynb)")


@dataclass(frozen=True)
class InstructResult:
    latents: "torch.Tensor"  # (1, C, h, w)
    roi: "torch.Tensor | None" = None  # (S, S) bool: the region LIME edited


class InstructMethod(Entry):
    """An instruction-editing method: :meth:`run` edits ``image`` by ``instruction``; ``makes_roi``:
    it returns the region it edited."""

    makes_roi: ClassVar[bool] = False

    @staticmethod
    def run(bundle, image, instruction, num_steps, options, seed, mask=None, progress=None) -> InstructResult:
        raise NotImplementedError


class IP2P(InstructMethod):
    name: ClassVar[str] = "ip2p"
    summary: ClassVar[str] = "InstructPix2Pix alone (no localisation)"
    Options: ClassVar[type] = IP2PEditOptions
    uses: ClassVar[frozenset[str]] = frozenset()
    makes_roi: ClassVar[bool] = False
    papers = (IP2P_PAPER,)

    @staticmethod
    def run(bundle, image, instruction, num_steps, options, seed, mask=None, progress=None) -> InstructResult:
        import torch

        from .ip2p import instruct_edit

        z = instruct_edit(bundle, image, instruction, num_steps, options.guidance, torch.Generator().manual_seed(seed),
                          progress=progress, sampler=options.sampler)
        return InstructResult(z)


class LIME(InstructMethod):
    name: ClassVar[str] = "lime"
    summary: ClassVar[str] = "finds the region to edit by itself (or takes --mask) and keeps the edit inside it"
    Options: ClassVar[type] = LIMEOptions
    uses: ClassVar[frozenset[str]] = frozenset({"mask"})
    makes_roi: ClassVar[bool] = True
    papers, built_on = (LIME_PAPER,), ("ip2p",)

    @staticmethod
    def run(bundle, image, instruction, num_steps, options, seed, mask=None, progress=None) -> InstructResult:
        from dataclasses import replace

        from .lime import lime_edit

        res = lime_edit(bundle, image, instruction, num_steps, replace(options, seed=seed), seed, mask, progress)
        return InstructResult(res.latents, res.roi)


INSTRUCT_METHODS = {"ip2p": IP2P, "lime": LIME}
