"""Model bundle and loading, DDIM math, text and image encoding."""

from .ddim import DDIMSchedule, ddim_step, predicted_x0, to_epsilon
from .loading import BUILTIN_MODELS, load_model, save_model
from .model import ModelBundle

__all__ = ["BUILTIN_MODELS", "DDIMSchedule", "ModelBundle", "ddim_step", "load_model", "predicted_x0", "save_model", "to_epsilon"]
