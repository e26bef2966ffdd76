"""Names the command line offers before anything heavy is imported."""

from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parents[1] / "models"  # the shipped shapes models
BUILTIN_MODEL_NAMES = ("shapes", "shapes-instruct", "shapes-flow", "tiny-random")  # locedit.diffusion.loading.BUILTIN_MODELS
DTYPE_NAMES = ("fp32", "fp16", "bf16")  # locedit.diffusion.loading.DTYPES
