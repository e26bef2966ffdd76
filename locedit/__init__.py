"""locedit: localized text-guided editing of real images with diffusion models."""

__version__ = "0.1.0"


def __getattr__(name):  # the public helpers, imported on first use (``import locedit`` stays light)
    if name in ("load_image", "load_mask", "save_png"):
        from . import fileio

        return getattr(fileio, name)
    if name == "pipeline":
        import importlib

        return importlib.import_module(".pipeline", __name__)
    raise AttributeError(f"module 'locedit' has no attribute {name!r}")
