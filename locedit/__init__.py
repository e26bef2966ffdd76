"""locedit: localized text-guided editing of real images with diffusion models."""

__version__ = "0.1.0"
