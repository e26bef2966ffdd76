"""The flow editors' options and citations (torch-free: the command line builds its flags and refuses
bad ones from these before torch is imported). Each editor's module documents its rule and cites
these; the registry is :mod:`.editors`."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from ..errors import LoceditError
from ..options import Citation

SOLVERS = ("euler", "rf-solver", "fireflow", "uni-inv")  # locedit.diffusion.flow.walk's (tested equal)
KV_SOLVERS = ("euler", "rf-solver")  # the ones whose every sampling call has a recorded partner (KV-Edit)

FLOWEDIT_PAPER = Citation("Kulikov et al., FlowEdit: Inversion-Free Text-Based Editing Using Pre-Trained Flow "
                          "Models, ICCV 2025", "Alg. 1",
                          "fallenshock/FlowEdit (FlowEdit_utils.py: FlowEditSD3, FlowEditFLUX)")
RFSOLVER_PAPER = Citation("Wang et al., Taming Rectified Flow for Inversion and Editing, ICML 2025", "Eq. 8, Sec. 4.2",
                          "wangjiangshan0725/RF-Solver-Edit (FLUX_Image_Edit/src: sampling.py denoise, layers.py)")
FIREFLOW = Citation("Deng et al., FireFlow: Fast Inversion of Rectified Flow for Image Semantic Editing, ICML 2025",
                    "Eq. 9-10", "HolmesShuan/FireFlow (src: sampling.py denoise_fireflow, layers.py, run_*.sh)")
KVEDIT_PAPER = Citation("Zhu et al., KV-Edit: Training-Free Image Editing for Precise Background Preservation, 2025",
                        "Sec. 3", "Xilluill/KV-Edit (models/kv_edit.py, flux/sampling.py denoise_kv, flux/modules/layers.py)")

FLOWEDIT_DEFAULTS = {
    "sd3": dict(steps=50, n_max=33, src_guidance=3.5, tar_guidance=13.5),
    "flux": dict(steps=28, n_max=24, src_guidance=1.5, tar_guidance=5.5),
}


@dataclass(frozen=True)
class FlowEditOptions:
    """FlowEdit's settings; None takes the family's default (:data:`FLOWEDIT_DEFAULTS`)."""

    steps: int | None = field(default=None, metadata={"flag": "steps", "type": int,
                                                      "help": "T, the schedule's steps (None: the family's)"})
    n_max: int | None = field(default=None, metadata={"flag": "n-max", "type": int,
                                                      "help": "edit over the last n_max steps (None: the family's)"})
    n_min: int = field(default=0, metadata={"flag": "n-min", "type": int,
                                            "help": "the last n_min steps sample the target plainly"})
    n_avg: int = field(default=1, metadata={"flag": "n-avg", "type": int, "help": "noise draws averaged per step"})
    src_guidance: float | None = field(default=None, metadata={"flag": "src-guidance", "type": float,
                                                               "help": "the source branch's scale (None: the family's)"})
    tar_guidance: float | None = field(default=None, metadata={"flag": "tar-guidance", "type": float,
                                                               "help": "the target branch's scale (None: the family's)"})

    def __post_init__(self):
        if self.n_avg < 1 or self.n_min < 0 or (self.n_max is not None and self.n_max < 1):
            raise LoceditError("flowedit needs n_avg >= 1, n_min >= 0 and n_max >= 1")

    def resolved(self, family: str) -> "FlowEditOptions":
        """Every None replaced by ``family``'s default; n_min <= n_max <= steps checked."""
        if family not in FLOWEDIT_DEFAULTS:
            raise LoceditError(f"flowedit runs on FLUX and SD3 models, not {family}")
        out = replace(self, **{k: v for k, v in FLOWEDIT_DEFAULTS[family].items() if getattr(self, k) is None})
        if not out.n_min <= out.n_max <= out.steps:
            raise LoceditError(f"flowedit needs n_min <= n_max <= steps, got {out.n_min}, {out.n_max}, {out.steps}")
        return out


@dataclass(frozen=True)
class RFSolverEditOptions:
    """RF-Solver-Edit's settings; the defaults are the authors' ``edit.py``'s."""

    steps: int = field(default=25, metadata={"flag": "steps", "type": int, "help": "inversion and sampling steps"})
    inject: int = field(default=20, metadata={"flag": "inject", "type": int,
                                              "help": "the first sampling steps that share the inversion's values"})
    guidance: float = field(default=5.0, metadata={"flag": "guidance", "type": float,
                                                   "help": "FLUX's distilled guidance of the target's sampling "
                                                           "(the inversion runs at 1)"})
    single_from: int = field(default=20, metadata={"flag": "single-from", "type": int,
                                                   "help": "share the values of single-stream blocks from this index "
                                                           "on (RF-Solver's code: id > 19)"})
    single_to: int | None = field(default=None, metadata={"flag": "single-to", "type": int,
                                                          "help": "... up to this index, inclusive (None: the last)"})
    solver: str = field(default="rf-solver", metadata={"flag": "solver", "choices": SOLVERS,
                                                       "help": "the inversion's and sampling's solver"})

    def __post_init__(self):
        if self.steps < 1 or self.inject < 0 or self.inject > self.steps or self.single_from < 0:
            raise LoceditError("value sharing needs steps >= 1, 0 <= inject <= steps and single_from >= 0")
        if self.single_to is not None and self.single_to < self.single_from:
            raise LoceditError(f"single_to ({self.single_to}) is below single_from ({self.single_from})")
        if self.solver not in SOLVERS:
            raise LoceditError(f"solver must be one of {', '.join(SOLVERS)}, got {self.solver!r}")


def _default(cls, name: str, value):
    """``cls``'s field ``name`` (its flag and help) with another default: a subclass's reading."""
    return field(default=value, metadata=cls.__dataclass_fields__[name].metadata)


@dataclass(frozen=True)
class FireFlowEditOptions(RFSolverEditOptions):
    """FireFlow's editing (Deng et al., ICML 2025; HolmesShuan/FireFlow ``src/edit.py`` with
    ``--sampling_strategy fireflow``): RF-Solver-Edit's value sharing (``reuse_v`` 1, ``replace_v``)
    on FireFlow's solver, over the single-stream blocks ``start_layer_index`` ..
    ``end_layer_index``. Defaults: the repository's editing scripts (``run_*.sh``, "Fast Editing"):
    8 steps, inject 1, guidance 2, blocks 0 to the last (37 of FLUX.1's 38); its ``edit.py``'s own
    defaults (25 steps, inject 20, guidance 5, blocks 20-37, the rf_solver strategy) are
    RF-Solver-Edit's."""

    steps: int = _default(RFSolverEditOptions, "steps", 8)
    inject: int = _default(RFSolverEditOptions, "inject", 1)
    guidance: float = _default(RFSolverEditOptions, "guidance", 2.0)
    single_from: int = _default(RFSolverEditOptions, "single_from", 0)
    solver: str = _default(RFSolverEditOptions, "solver", "fireflow")


@dataclass(frozen=True)
class KVEditOptions:
    """KV-Edit's settings; the defaults are the authors' demo's."""

    steps: int = field(default=28, metadata={"flag": "steps", "type": int,
                                             "help": "the schedule's steps before skipping"})
    skip: int = field(default=4, metadata={"flag": "skip", "type": int,
                                           "help": "levels dropped from the top of the schedule"})
    inversion_guidance: float = field(default=1.5, metadata={"flag": "inversion-guidance", "type": float,
                                                             "help": "FLUX's distilled guidance of the inversion"})
    guidance: float = field(default=5.5, metadata={"flag": "guidance", "type": float,
                                                   "help": "FLUX's distilled guidance of the edit"})
    attn_scale: float = field(default=1.0, metadata={"flag": "attn-scale", "type": float,
                                                     "help": "added to the logits of background keys while editing "
                                                             "(0: off)"})
    re_init: bool = field(default=False, metadata={"flag": "re-init",
                                                   "help": "start the foreground from the source noised by a fresh "
                                                           "draw instead of the inversion"})
    attn_mask: bool = field(default=False, metadata={"flag": "attn-mask",
                                                     "help": "keep foreground and background apart in the "
                                                             "inversion's attention"})
    inversion_free: bool = field(default=False, metadata={"flag": "inversion-free",
                                                          "help": "the code's inversion-free editor (FlowEdit's ODE on "
                                                                  "the foreground)"})
    solver: str = field(default="euler", metadata={"flag": "solver", "choices": SOLVERS,
                                                   "help": "the inversion's and sampling's solver"})

    def __post_init__(self):
        if self.steps < 1 or not 0 <= self.skip < self.steps:
            raise LoceditError(f"kv-edit needs steps >= 1 and 0 <= skip < steps, got {self.steps} and {self.skip}")
        if self.solver not in KV_SOLVERS:
            raise LoceditError(f"kv-edit's solver is {' or '.join(KV_SOLVERS)} (each sampling call replays a recorded "
                               f"one), not {self.solver}")
        if self.inversion_free and self.solver != "euler":
            raise LoceditError("kv-edit's inversion-free editor has no inversion to solve: --solver is euler there")
        if self.inversion_free and self.re_init:
            raise LoceditError("kv-edit's re_init starts the inversion-based editor; the inversion-free one has none")


RFINVERSION_PAPER = Citation("Rout et al., Semantic Image Inversion and Editing using Rectified Stochastic "
                             "Differential Equations, ICLR 2025", "Alg. 1 (Eq. 8), Alg. 2 (Eq. 17)",
                             "diffusers examples/community/pipeline_flux_rf_inversion.py (RFInversionFluxPipeline)")


@dataclass(frozen=True)
class RFInversionOptions:
    """RF-Inversion's settings; the defaults are diffusers' community pipeline's (``invert``: 28 steps,
    gamma 0.5, guidance 0 on the empty prompt; ``__call__``: eta 1.0 from 0 to 0.25 of the steps,
    guidance 3.5)."""

    steps: int = field(default=28, metadata={"flag": "steps", "type": int, "help": "inversion and editing steps"})
    gamma: float = field(default=0.5, metadata={"flag": "gamma", "type": float,
                                                "help": "the forward ODE's pull towards its noise draw (Eq. 8)"})
    inversion_guidance: float = field(default=0.0, metadata={"flag": "inversion-guidance", "type": float,
                                                             "help": "FLUX's distilled guidance of the inversion"})
    inversion_prompt: str = field(default="empty", metadata={"flag": "inversion-prompt", "choices": ("empty", "source"),
                                                             "help": "the inversion's prompt: empty (the pipeline's "
                                                                     "default, the paper's) or --source"})
    eta: float = field(default=1.0, metadata={"flag": "eta", "type": float,
                                              "help": "the reverse ODE's pull towards the image (Eq. 17)"})
    start: float = field(default=0.0, metadata={"flag": "start-timestep", "type": float,
                                                "help": "eta acts from this share of the steps"})
    stop: float = field(default=0.25, metadata={"flag": "stop-timestep", "type": float,
                                                "help": "... until this share"})
    guidance: float = field(default=3.5, metadata={"flag": "guidance", "type": float,
                                                   "help": "FLUX's distilled guidance of the edit"})

    def __post_init__(self):
        if self.steps < 1 or not 0 <= self.start <= self.stop or self.stop > 1:
            raise LoceditError(f"rf-inversion needs steps >= 1 and 0 <= start <= stop <= 1, got {self.steps}, "
                               f"{self.start}, {self.stop}")


UNIEDIT_PAPER = Citation("Jiao et al., UniEdit-Flow: Unleashing Inversion and Editing in the Era of Flow Models, 2025",
                         "Uni-Inv (predictor-corrector inversion), Uni-Edit (delayed injection, velocity fusion)",
                         "DSL-Lab/UniEdit-Flow (UniEdit-Flow_FLUX/src/flux/sampling.py: denoise_uniinv, edit_uniedit)")


@dataclass(frozen=True)
class UniEditOptions:
    """UniEdit-Flow's settings; the defaults are its FLUX ``edit.py``'s (15 steps, alpha 0.6, omega 5,
    guidance 1; its README recommends alpha 0.6-0.8, omega 5, 8-30 steps, guidance 1-2)."""

    steps: int = field(default=15, metadata={"flag": "steps", "type": int, "help": "the schedule's steps"})
    alpha: float = field(default=0.6, metadata={"flag": "alpha", "type": float,
                                                "help": "the delay rate: invert and edit over round(alpha * steps) "
                                                        "steps"})
    omega: float = field(default=5.0, metadata={"flag": "omega", "type": float,
                                                "help": "the guidance strength of the velocity difference"})
    guidance: float = field(default=1.0, metadata={"flag": "guidance", "type": float,
                                                   "help": "FLUX's distilled guidance of the edit (the inversion "
                                                           "runs at 1)"})
    zero_init: bool = field(default=False, metadata={"flag": "zero-init",
                                                     "help": "Uni-Inv's first predictor velocity is zero"})
    solver: str = field(default="uni-inv", metadata={"flag": "solver", "choices": SOLVERS,
                                                     "help": "the delayed inversion's solver"})

    def __post_init__(self):
        if self.steps < 1 or not 0 < self.alpha <= 1:
            raise LoceditError(f"uniedit-flow needs steps >= 1 and 0 < alpha <= 1, got {self.steps}, {self.alpha}")
        if self.solver not in SOLVERS:
            raise LoceditError(f"uniedit-flow's solver is one of {', '.join(SOLVERS)}, not {self.solver}")
        if self.zero_init and self.solver != "uni-inv":
            raise LoceditError(f"--zero-init is Uni-Inv's (its first predictor velocity); not with --solver {self.solver}")


# ---- the flow inversions (registry: :mod:`.inversions`) --------------------------------------------------------
EULER_PAPER = Citation("Liu et al., Flow Straight and Fast: Learning to Generate and Transfer Data with Rectified "
                       "Flow, ICLR 2023", "the ODE dz = v dt walked from the data up (Euler steps)",
                       "diffusers FlowMatchEulerDiscreteScheduler.step, reversed")


@dataclass(frozen=True)
class FlowInversionOptions:
    """An ODE inversion's settings (euler, rf-solver, fireflow, uni-inv). The steps and the guidance
    are the command's ``--steps`` and ``--guidance`` (FLUX's distilled scale, or SD3's
    classifier-free scale against the empty prompt; 1: the prompt's velocity alone)."""

    prompt: str = field(default="source", metadata={"flag": "inversion-prompt", "choices": ("source", "empty"),
                                                    "help": "the prompt the inversion runs on: --source or the "
                                                            "empty one"})
    guidance: float = 1.0

    def __post_init__(self):
        if self.prompt not in ("source", "empty"):
            raise LoceditError(f"the inversion prompt is 'source' or 'empty', not {self.prompt!r}")


@dataclass(frozen=True)
class UniInvOptions(FlowInversionOptions):
    """Uni-Inv's settings (UniEdit-Flow's ``denoise_uniinv``: the empty prompt, guidance 1)."""

    prompt: str = _default(FlowInversionOptions, "prompt", "empty")
    zero_init: bool = field(default=False, metadata={"flag": "zero-init",
                                                     "help": "Uni-Inv's first predictor velocity is zero"})


@dataclass(frozen=True)
class RFInvertOptions(FlowInversionOptions):
    """RF-Inversion's controlled forward ODE (Alg. 1) as the community pipeline's ``invert``: the empty
    prompt, distilled guidance 0, gamma 0.5, one noise draw from ``seed``."""

    prompt: str = _default(FlowInversionOptions, "prompt", "empty")
    guidance: float = 0.0
    gamma: float = field(default=0.5, metadata={"flag": "gamma", "type": float,
                                                "help": "the forward ODE's pull towards its noise draw (Eq. 8)"})
