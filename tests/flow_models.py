"""The flow tests' tiny models (built in :mod:`locedit.diffusion.tiny_flow`)."""

from locedit.diffusion.tiny_flow import tiny_flux, tiny_sd3  # noqa: F401
