"""Options of InstructPix2Pix sampling and of LIME (light: no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import LoceditError

SAMPLERS = ("ddim", "euler-ancestral")


@dataclass(frozen=True)
class IP2POptions:
    image_guidance: float = field(default=1.5, metadata={  # s_I
        "flag": "image-guidance", "type": float, "help": "image guidance s_I"})
    text_guidance: float = field(default=7.5, metadata={  # s_T
        "flag": "text-guidance", "aliases": ("guidance",), "type": float,
        "help": "text guidance s_T (--guidance: the same, as in locedit edit)"})

    def __post_init__(self):
        import math

        if not all(math.isfinite(v) and v >= 0 for v in (self.image_guidance, self.text_guidance)):
            raise LoceditError("image_guidance and text_guidance must be finite numbers >= 0")


FEATURES = ("self", "self+cross")
SITES = ("all", "map-levels", "below-latent")
REG_ROWS = ("text", "all")
REG_LEVELS = ("all", "finer-than-map")


@dataclass(frozen=True)
class LIMEOptions:
    """LIME's options; defaults are the paper's, ``PRESETS["official"]`` the authors' notebook."""

    clusters: int = field(default=8, metadata={"flag": "clusters", "type": int, "help": "k-means clusters"})
    points: int = field(default=100, metadata={"flag": "points", "type": int, "help": "top attention points"})
    feature_steps: tuple[float, float] = (0.30, 0.50)  # fractions of the steps (paper: 30-50 of 100)
    attention_steps: tuple[float, float] = (0.0, 0.75)  # paper: 1-75 of 100
    regularize_steps: tuple[float, float] = (0.0, 0.75)
    feature_scale: float = 0.5  # side of the fused features, as a fraction of the image side (paper 256 of 512)
    features: str = field(default="self+cross", metadata={
        "flag": "lime-features", "choices": FEATURES,
        "help": "attention-layer outputs clustered: self-attention's only, or self- and cross-attention's (the code)"})
    sites: str = field(default="all", metadata={
        "flag": "lime-sites", "choices": SITES,
        "help": "levels the features and the attention come from: all; map-levels, the map level and the next "
                "finer one (SD's 16x16 and 32x32); below-latent, every level coarser than the latent's, the mid "
                "block included (SD's 32x32, 16x16 and 8x8: the notebook's first call)"})
    drop_verbs: bool = field(default=False, metadata={
        "flag": "drop-verbs", "help": "localisation ignores verbs too (the code; needs nltk and its tagger data)"})
    keep_end_token: bool = field(default=True, metadata={
        "flag": "keep-end-token", "help": "the end token counts as a related token (the code)"})
    padding_related: bool = field(default=False, metadata={
        "flag": "padding-related", "help": "the padding positions count as related tokens in the RoI (a locedit "
        "option, neither the paper's nor the code's, which regularise padding: for a model that reads the "
        "instruction from its padding positions, as the bundled shapes-instruct does)"})
    regularize_rows: str = field(default="all", metadata={
        "flag": "regularize-rows", "choices": REG_ROWS,
        "help": "rows whose logits are regularised: all three guidance rows (the code) or the text row only"})
    regularize_levels: str = field(default="all", metadata={
        "flag": "regularize-levels", "choices": REG_LEVELS,
        "help": "cross-attention levels regularised: all (the paper) or those finer than the map level (the code)"})
    sampler: str = field(default="euler-ancestral", metadata={
        "flag": "sampler", "choices": SAMPLERS, "help": "euler-ancestral (the checkpoint's, the code) or ddim"})
    kmeans_init: int = 1  # k-means initialisations (the code's cuML n_init=1)
    localize_guidance: IP2POptions = field(default=IP2POptions(1.5, 7.5), metadata={"flag_prefix": "localize-"})
    edit_guidance: IP2POptions = IP2POptions(1.5, 3.5)
    seed: int = 0  # k-means

    PRESETS = {"paper": {}, "official": {
        "points": 1, "feature_steps": (1 / 3, 11 / 30), "attention_steps": (1 / 3, 11 / 30),
        "regularize_steps": (0.0, 0.9), "feature_scale": 0.25, "sites": "below-latent", "drop_verbs": True,
        "regularize_levels": "finer-than-map",
        "localize_guidance": {"text_guidance": 5.5}, "edit_guidance": {"text_guidance": 2.0}}}

    def __post_init__(self):
        if self.clusters < 1 or self.points < 1:
            raise LoceditError("clusters and points must be >= 1")
        for name in ("feature_steps", "attention_steps", "regularize_steps"):
            lo, hi = getattr(self, name)
            if not 0.0 <= lo <= hi <= 1.0:
                raise LoceditError(f"{name} must be 0 <= start <= end <= 1, got {(lo, hi)}")
        for name, allowed in (("features", FEATURES), ("sites", SITES), ("regularize_rows", REG_ROWS),
                              ("regularize_levels", REG_LEVELS), ("sampler", SAMPLERS)):
            if getattr(self, name) not in allowed:
                raise LoceditError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if not 0.0 < self.feature_scale <= 1.0:
            raise LoceditError(f"feature_scale must be in (0, 1], got {self.feature_scale}")


@dataclass(frozen=True)
class IP2PEditOptions:
    """InstructPix2Pix alone: its two guidance scales and the sampler (DDIM by default; the released
    checkpoint ships Euler ancestral, ``--preset official``)."""

    guidance: IP2POptions = IP2POptions(1.5, 7.5)
    sampler: str = field(default="ddim", metadata={
        "flag": "sampler", "choices": SAMPLERS, "help": "ddim or euler-ancestral (the released checkpoint's)"})

    PRESETS = {"paper": {}, "official": {"sampler": "euler-ancestral"}}
