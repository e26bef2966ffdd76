"""Model bundle and loading, DDIM math, text and image encoding (imported on first use)."""

from .._lazy import lazy_attributes

__getattr__ = lazy_attributes(__name__, {
    "DDIMSchedule": ".ddim", "add_noise": ".ddim", "ddim_step": ".ddim", "predicted_x0": ".ddim", "to_epsilon": ".ddim",
    "BUILTIN_MODELS": ".loading", "load_model": ".loading", "save_model": ".loading", "ModelBundle": ".model",
    "from_pipeline": ".model",
})

__all__ = ["BUILTIN_MODELS", "DDIMSchedule", "add_noise", "from_pipeline", "ModelBundle", "ddim_step", "load_model", "predicted_x0", "save_model", "to_epsilon"]
