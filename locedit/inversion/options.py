"""The inversions' options (light: no torch), read by the CLI and the registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LoceditError


@dataclass(frozen=True)
class DDIMInversionOptions:
    """Plain DDIM inversion has no options."""


@dataclass(frozen=True)
class NullTextOptions:
    """Null-text inversion's per-step optimiser (Mokady et al., Sec. 3.3; their code agrees)."""

    UNCOND = "learned"  # the trajectory's unconditional rule (Trajectory.uncond): its learned nulls
    TAKES_GRADIENTS = True  # backpropagates through the UNet (what --grad-checkpointing acts on)

    inner_steps: int = field(default=10, metadata={
        "flag": "nti-steps", "type": int, "help": "null-text: max Adam steps per sampling step"})
    lr: float = field(default=1e-2, metadata={
        "flag": "nti-lr", "type": float, "help": "null-text: Adam learning rate at step 0"})
    lr_decay: float = 1e-2  # lr_i = lr * (1 - lr_decay * i)
    epsilon: float = 1e-5  # early-stop threshold at step 0
    epsilon_growth: float = 2e-5  # added per step

    def __post_init__(self):
        if self.inner_steps < 0:
            raise LoceditError(f"inner_steps must be >= 0, got {self.inner_steps}")
        if self.lr <= 0:
            raise LoceditError(f"lr must be > 0, got {self.lr}")


@dataclass(frozen=True)
class NegativePromptOptions:
    """Negative-prompt inversion has no options."""

    UNCOND = "source"  # the source prompt's embedding in the unconditional rows


@dataclass(frozen=True)
class DirectInversionOptions:
    """Direct inversion has no options."""


SPD_OPTIMIZERS = ("adamw", "sgd")
SPD_OBJECTIVES = ("mse", "l2")


@dataclass(frozen=True)
class SPDOptions:
    """SPDInv's search (Alg. 1): K = 25, delta = 5e-6, eta = 1e-3 (Sec. 4.4), all from the paper."""

    TAKES_GRADIENTS = True

    max_steps: int = field(default=25, metadata={  # K
        "flag": "spd-steps", "type": int, "help": "spd: max search steps K per inversion step"})
    threshold: float = field(default=5e-6, metadata={  # delta
        "flag": "spd-threshold", "type": float, "help": "spd: stop once the residual is below delta"})
    lr: float = field(default=1e-3, metadata={  # eta
        "flag": "spd-lr", "type": float, "help": "spd: learning rate eta"})
    optimizer: str = field(default="sgd", metadata={
        "flag": "spd-optimizer", "choices": SPD_OPTIMIZERS,
        "help": "spd: sgd (the paper's gradient descent) or adamw (the authors' code)"})
    weight_decay: float = 0.01  # AdamW only
    objective: str = field(default="l2", metadata={
        "flag": "spd-objective", "choices": SPD_OBJECTIVES,
        "help": "spd: residual measure, l2 norm (paper) or mse (code)"})

    PRESETS = {"paper": {"optimizer": "sgd", "objective": "l2"},
               "official": {"optimizer": "adamw", "objective": "mse"}}

    def __post_init__(self):
        if self.optimizer not in SPD_OPTIMIZERS:
            raise LoceditError(f"optimizer must be one of {', '.join(SPD_OPTIMIZERS)}, got {self.optimizer!r}")
        if self.objective not in SPD_OBJECTIVES:
            raise LoceditError(f"objective must be one of {', '.join(SPD_OBJECTIVES)}, got {self.objective!r}")
        if self.max_steps < 1:
            raise LoceditError(f"max_steps must be >= 1, got {self.max_steps}")
        if self.lr <= 0:
            raise LoceditError(f"lr must be > 0, got {self.lr}")


NMG_LOSSES = ("l1", "l2", "smooth_l1")


@dataclass(frozen=True)
class NMGOptions:
    """Noise Map Guidance's editing-side rule (Cho et al., ICML 2024; hansam95/NMG,
    ``prompt_to_prompt/pipeline_stable_diffusion_nmg.py``): the code's defaults."""

    grad_scale: float = field(default=5e3, metadata={
        "flag": "nmg-grad-scale", "type": float, "help": "nmg: scale of the noise-map gradient (grad_scale, 5e3)"})
    scale: float = field(default=10.0, metadata={
        "flag": "nmg-scale", "type": float, "help": "nmg: noise-map guidance scale (guidance_noise_map, 10)"})
    loss: str = field(default="l1", metadata={
        "flag": "nmg-loss", "choices": NMG_LOSSES, "help": "nmg: distance to the inversion's latent (l1)"})

    def __post_init__(self):
        if self.loss not in NMG_LOSSES:
            raise LoceditError(f"nmg loss must be one of {NMG_LOSSES}, got {self.loss!r}")
        if self.grad_scale < 0 or self.scale < 0:
            raise LoceditError("nmg grad_scale and scale must be >= 0")


@dataclass(frozen=True)
class AIDIOptions:
    """AIDI's fixed-point inversion (Pan et al., ICCV 2023) as SPDInv describes it: ``rounds``
    assignments z_t := f(z_t) per step, from the DDIM step."""

    rounds: int = field(default=5, metadata={
        "flag": "aidi-rounds", "type": int, "help": "aidi: fixed-point rounds per inversion step (5)"})

    def __post_init__(self):
        if self.rounds < 1:
            raise LoceditError(f"aidi rounds must be >= 1, got {self.rounds}")
