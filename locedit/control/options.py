"""Prompt-to-Prompt's options (light: no torch), read by the CLI and the method registry."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LoceditError

P2P_MODES = ("replace", "refine", "reweight")
CROSS_WINDOWS = ("n", "n+1")


def parse_reweight(text: str) -> tuple[str, float]:
    """'WORD=SCALE' -> (word, scale)."""
    word, sep, scale = text.rpartition("=")
    try:
        value = float(scale)
    except ValueError:
        value = None
    if not sep or not word or value is None:
        raise ValueError(f"expected WORD=SCALE, got {text!r}")
    return word, value


@dataclass(frozen=True)
class P2POptions:
    """Prompt-to-Prompt attention injection (Hertz et al., ICLR 2023, Sec. 3.2); fractions are of the
    number of sampling steps."""

    mode: str = field(default="refine", metadata={
        "flag": "p2p", "choices": P2P_MODES,
        "help": "replace: word swap (same number of words); refine: aligned tokens take the source maps; "
                "reweight: refine plus --reweight scales (--reweight also goes with replace)"})
    cross_replace: float = field(default=0.8, metadata={
        "flag": "cross-replace", "type": float, "help": "fraction of steps with cross-attention injection"})
    cross_window: str = field(default="n", metadata={
        "flag": "cross-window", "choices": CROSS_WINDOWS,
        "help": "cross-attention injection for the first int(X * N) steps of N (n: the paper's fraction of "
                "the steps) or int(X * (N + 1)) (n+1: the authors' get_time_words_attention_alpha)"})
    self_replace: float = field(default=0.4, metadata={
        "flag": "self-replace", "type": float, "help": "fraction of steps with self-attention injection"})
    self_min_level: int = 1  # self-attention injected at levels >= this (SD: maps of 32x32 and coarser)
    reweight: tuple[tuple[str, float], ...] = field(default=(), metadata={
        "flag": "reweight", "repeat": True, "type": parse_reweight, "metavar": "WORD=SCALE",
        "help": "scale a target word's attention (repeatable; with --p2p reweight, or with --p2p replace: a word "
                "swap with scales, the authors' AttentionReweight over AttentionReplace)"})

    PRESETS = {"official": {"cross_window": "n+1"}}

    def __post_init__(self):
        if self.mode not in P2P_MODES:
            raise LoceditError(f"p2p mode must be one of {', '.join(P2P_MODES)}, got {self.mode!r}")
        if self.cross_window not in CROSS_WINDOWS:
            raise LoceditError(f"cross_window must be one of {', '.join(CROSS_WINDOWS)}, got {self.cross_window!r}")
        for name in ("cross_replace", "self_replace"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise LoceditError(f"{name} must be in [0, 1], got {v}")
        if self.mode == "reweight" and not self.reweight:
            raise LoceditError("p2p mode 'reweight' needs at least one word=scale to reweight")
        if self.reweight and self.mode == "refine":
            raise LoceditError("--reweight needs --p2p reweight (refine with scales) or --p2p replace (a word swap "
                               "with scales)")
        for word, scale in self.reweight:
            if scale < 0:
                raise LoceditError(f"reweight scale for {word!r} must be >= 0, got {scale}")


@dataclass(frozen=True)
class LocalBlendOptions:
    """P2P's LocalBlend (appendix): from step int(start * N) on, the target's latents outside the mask
    are the source's; the mask is the union of the blend words' accumulated maps, max-pooled
    (radius ``pool``), max-normalised and thresholded, or a user mask."""

    threshold: float = field(default=0.3, metadata={
        "flag": "blend-threshold", "type": float, "help": "local blend: threshold of the normalised maps"})
    start: float = field(default=0.2, metadata={
        "flag": "blend-start", "type": float, "help": "local blend: fraction of steps before blending starts"})
    pool: int = 1  # max-pool radius on the map before thresholding

    def __post_init__(self):
        for name in ("threshold", "start"):
            v = getattr(self, name)
            if not 0.0 <= v <= 1.0:
                raise LoceditError(f"blend {name} must be in [0, 1], got {v}")
