"""Options of the latent-guidance loop and of LocInv's token learning (light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LoceditError
from ..inversion.options import NullTextOptions


@dataclass(frozen=True)
class GuidanceOptions:
    """The latent-guidance loop's schedule and step (MAG-Edit Sec. 3.3, Alg. 1)."""

    guided_steps: int = field(default=25, metadata={  # tau: guide sampling steps 0 .. tau-1
        "flag": "guided-steps", "type": int, "help": "sampling steps with latent guidance (the first N)"})
    iterations: int = field(default=15, metadata={  # MAX_IT
        "flag": "iterations", "type": int, "help": "guidance iterations per guided step (MAX_IT)"})
    step_size: float = field(default=2.5, metadata={  # delta
        "flag": "step-size", "type": float, "help": "guidance step size delta"})
    sigma_scaling: bool = field(default=True, metadata={
        "flag": "sigma-scaling", "help": "scale the step by sigma_t = sqrt((1 - abar_t) / abar_t) (the authors' code)"})

    def __post_init__(self):
        if self.guided_steps < 0 or self.iterations < 0:
            raise LoceditError("guided_steps and iterations must be >= 0")
        if self.step_size < 0:
            raise LoceditError(f"step_size must be >= 0, got {self.step_size}")


# (alpha, beta, lambda) per loss and prior kind, from the authors' scripts
LOCINV_DEFAULTS = {
    "seg": {"sim": (50.0, 0.7, 1.0), "ov": (25.0, 0.7, 1.0)},
    "box": {"sim": (25.0, 0.5, 0.1), "ov": (25.0, 0.5, 1.0)},
    "adj": (50.0, 0.1, 2.0),
}
PAIR_SOURCES = ("auto", "user", "parser", "previous", "preceding")
NTI_MODES = ("carry", "restart")
BOX_DEFAULTS = ("scripts", "det-script")
RESTART_ITERATIONS = 31  # the code's fixed null-text iterations per step
ENCODE_MODES = ("mean", "sample")
PRIOR_RESIZES = ("pil-nonzero", "area")
ENCODE_SEED = 0  # _2_DDIM_inv.py: generator = torch.manual_seed(0) for the VAE posterior sample


@dataclass(frozen=True)
class LocInvOptions:
    max_inner: int = field(default=31, metadata={
        "flag": "locinv-inner", "type": int, "help": "max token-learning steps per sampling step"})
    lr: float = 1e-3
    weight_decay: float = 1e-2
    # (alpha, beta, lambda); None = the authors' value for the prior kind
    sim: tuple[float, float, float] | None = None
    ov: tuple[float, float, float] | None = None
    adj: tuple[float, float, float] = LOCINV_DEFAULTS["adj"]
    adj_bind: bool = field(default=False, metadata={
        "flag": "adj-bind", "help": "bind adjectives to the region nouns found automatically (--pair-source); "
                                    "--bind ADJ:NOUN gives them explicitly"})
    pair_source: str = field(default="auto", metadata={
        "flag": "pair-source", "choices": PAIR_SOURCES,
        "help": "with --adj-bind: auto (spaCy when installed, else previous), parser, previous (the word before "
                "each noun unless an article or preposition), preceding (the authors' code: whatever word precedes "
                "the noun, 'a' and 'with' too; --preset official)"})
    nti_mode: str = field(default="carry", metadata={
        "flag": "nti-mode", "choices": NTI_MODES,
        "help": "per-step null-text: carry (NTI, the paper) or restart (from the empty prompt, 31 iterations, the code)"})
    box_defaults: str = field(default="scripts", metadata={
        "flag": "box-defaults", "choices": BOX_DEFAULTS,
        "help": "box-prior hyperparameters: the older shell scripts' (default) or the current det script's"})
    restart_iterations: int = field(default=RESTART_ITERATIONS, metadata={
        "flag": "locinv-restart-iterations", "type": int,
        "help": "null-text iterations per step with --nti-mode restart (the code's --null_inner_steps: 31 in the "
                "released seg runs)"})
    encode: str = field(default="mean", metadata={
        "flag": "locinv-encode", "choices": ENCODE_MODES,
        "help": "the image's latent: the VAE posterior's mean (the paper's encoder) or a sample with seed 0 "
                "(the code's _2_DDIM_inv.py)"})
    prior_resize: str = field(default="pil-nonzero", metadata={
        "flag": "locinv-prior-resize", "choices": PRIOR_RESIZES,
        "help": "priors at the map size: pil-nonzero (the code: Pillow's bicubic resize, every non-zero cell; "
                "the paper is silent) or area (the mean of each cell, soft)"})
    nti: NullTextOptions = field(default_factory=NullTextOptions)

    PRESETS = {"paper": {}, "official": {"nti_mode": "restart", "encode": "sample", "pair_source": "preceding"}}

    def __post_init__(self):
        if self.pair_source not in PAIR_SOURCES:
            raise LoceditError(f"pair_source must be one of {', '.join(PAIR_SOURCES)}, got {self.pair_source!r}")
        if self.nti_mode not in NTI_MODES:
            raise LoceditError(f"nti_mode must be one of {', '.join(NTI_MODES)}, got {self.nti_mode!r}")
        if self.encode not in ENCODE_MODES:
            raise LoceditError(f"encode must be one of {', '.join(ENCODE_MODES)}, got {self.encode!r}")
        if self.prior_resize not in PRIOR_RESIZES:
            raise LoceditError(f"prior_resize must be one of {', '.join(PRIOR_RESIZES)}, got {self.prior_resize!r}")
        if self.box_defaults not in BOX_DEFAULTS:
            raise LoceditError(f"box_defaults must be one of {', '.join(BOX_DEFAULTS)}, got {self.box_defaults!r}")
        if self.nti_mode != "restart" and self.restart_iterations != RESTART_ITERATIONS:
            raise LoceditError("restart_iterations (--locinv-restart-iterations) acts only with nti_mode restart "
                               "(--nti-mode restart, or --preset official)")
        if self.max_inner < 0 or self.lr <= 0 or self.restart_iterations < 0:
            raise LoceditError("max_inner and restart_iterations must be >= 0 and lr > 0")

    def params(self, kind: str) -> dict[str, tuple[float, float, float]]:
        d = LOCINV_DEFAULTS["seg" if kind == "box" and self.box_defaults == "det-script" else kind]
        return {"sim": self.sim or d["sim"], "ov": self.ov or d["ov"], "adj": self.adj}
