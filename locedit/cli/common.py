"""What every subcommand shares: the one-line-error parser, model flags, progress, model loading,
and the flags built from options dataclasses (see :mod:`locedit.options`)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys

from ..errors import LoceditError
from ..spec import DEFAULT_MODEL  # one default for the library and the command line

EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line, exit 2."""

    def error(self, message):  # noqa: D401 - argparse API
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def fraction(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return v


NO_VALUE = float("inf")  # a float flag given without its optional value (no typed value is infinite: finite_float)


def add_model_args(p: argparse.ArgumentParser, steps: int | None = 50, model_help: str = "") -> None:
    """--model, --device, --dtype, --vae, --steps (``steps`` None: default 50, or a flow editor's own),
    --seed, --fit."""
    from ..diffusion.names import BUILTIN_MODEL_NAMES, DTYPE_NAMES

    g = p.add_argument_group("model")
    g.add_argument("--model", default=None,
                   help=f"built-in name ({', '.join(BUILTIN_MODEL_NAMES)}), a local diffusers folder, or a hub id "
                        f"(safetensors only). Default: {DEFAULT_MODEL}{model_help}")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    g.add_argument("--dtype", default="fp32", choices=list(DTYPE_NAMES), help="network precision; step math stays fp32")
    add_vae_flag(g)
    shown = steps if steps is not None else "50; a flow editor's own"
    g.add_argument("--steps", type=_positive_int, default=steps,
                   help=f"sampling steps, 1 to the scheduler's training steps (default {shown})")
    g.add_argument("--seed", type=seed, default=0, help="random seed, 0 to 2**32 - 1 (default 0)")
    g.add_argument("--fit", default="pad", choices=["pad", "resize"],
                   help="how an image that is not the model's square size is fitted: pad the short side by "
                        "edge replication (default) or stretch; the result is returned at the input size")


def check_outputs(args) -> None:
    """``--out`` and, where the command has them and they are given, ``--panel`` and ``--save-attention``:
    each writable, all different files; checked before the model loads."""
    from pathlib import Path

    from ..fileio import check_output

    check_output(args.out)
    given = {"--out": args.out}
    for flag in ("--panel", "--save-attention"):
        path = getattr(args, flag[2:].replace("-", "_"), None)
        if path:
            check_output(path, flag)
            given[flag] = path
    if getattr(args, "attention_words", None) and "--save-attention" not in given:
        raise LoceditError("--attention-words needs --save-attention (the file its maps go to)")
    if len({str(Path(p).resolve()) for p in given.values()}) < len(given):
        raise LoceditError(f"{', '.join(given)} must be different files")


def add_vae_flag(group) -> None:
    group.add_argument("--vae", default=None, metavar="FOLDER_OR_HUB_ID",
                       help="replace the model's VAE with this diffusers VAE (safetensors), e.g. SDXL's fp16-safe "
                            "madebyollin/sdxl-vae-fp16-fix; without it SDXL's own VAE runs in float32 at fp16/bf16")


def add_output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an unexpected error")
    p.add_argument("--verbose", action="store_true",
                   help="let diffusers and transformers print their own warnings and loading bars")


def add_image_limit_flags(p: argparse.ArgumentParser) -> None:
    from ..fileio import MAX_BYTES, MAX_PIXELS

    g = p.add_argument_group("input limits")
    g.add_argument("--max-image-pixels", type=_positive_int, default=MAX_PIXELS, metavar="N",
                   help=f"refuse input images and masks over N pixels, before decoding them (default {MAX_PIXELS:,})")
    g.add_argument("--max-image-mb", type=_positive_float, default=MAX_BYTES / 2**20, metavar="MB",
                   help=f"refuse input files over MB mebibytes (default {MAX_BYTES // 2**20})")


def limits(args) -> dict:
    """Keyword arguments of :func:`locedit.fileio.load_image` / ``load_mask`` from the limit flags."""
    return {"max_pixels": args.max_image_pixels, "max_bytes": int(args.max_image_mb * 2**20)}


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def _positive_float(text: str) -> float:
    v = finite_float(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{text} must be > 0")
    return v


def finite_float(text: str) -> float:
    import math

    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(v):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return v


def seed(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if not 0 <= v < 2**32:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 2**32)")
    return v


def progress(args):
    from ..progress import tqdm_progress

    return None if args.quiet else tqdm_progress


def quiet_libraries(verbose: bool = False) -> None:
    """Silence diffusers'/transformers' own load bars and warnings (our stderr is ours) unless ``verbose``."""
    if verbose:
        return
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()
    _import_torchao_quietly()


def _import_torchao_quietly() -> None:
    """torchao (installed by the ``quant`` extra) logs warnings when it is imported - its CUDA kernels
    missing on a CPU machine, torch's deprecation of its Enum registrations - and diffusers imports it
    on its first model class: import it here first with those loggers at ERROR, restored after."""
    if "torchao" in sys.modules or importlib.util.find_spec("torchao") is None:
        return
    import logging

    loggers = [logging.getLogger(n) for n in ("torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        importlib.import_module("torchao")
        importlib.import_module("diffusers.quantizers")  # its torchao quantizer warns at import (verbosity: ERROR)
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def load_bundle(args, what: str = "", hint=None):
    """The model named by ``--model``, with ``--steps`` checked against its scheduler before any UNet call.
    A flow model is refused in one line naming ``what`` (default ``locedit COMMAND``) and, if given,
    ``hint(bundle)`` - what to run instead (default: its flow editors)."""
    import torch

    from ..diffusion import load_model

    torch.manual_seed(args.seed)  # the edge owns global state; the core takes explicit generators
    quiet_libraries(getattr(args, "verbose", False))
    bundle = load_model(args.model or DEFAULT_MODEL, args.device, args.dtype, vae=getattr(args, "vae", None))
    from ..diffusion.flow_model import UNET_FAMILIES, check_family

    check_family(bundle, UNET_FAMILIES, what or f"locedit {getattr(args, 'command', 'invert')}",
                 hint(bundle) if hint else "")
    try:
        bundle.steps(args.steps)
    except ValueError as exc:
        raise LoceditError(f"--steps {args.steps}: {exc}") from None
    return bundle


def fit_image(bundle, image, mode):
    from ..imaging import Fit

    fit = Fit.plan(image.shape[-2], image.shape[-1], bundle.image_size, mode)
    return fit, fit.to_model(image)


# ---- flags from options dataclasses ---------------------------------------------------------------------
def option_flag_table(classes: dict[str, type]) -> dict[str, list[tuple[str, object]]]:
    """flag -> [(owner name, FlagField)] over the options classes ``{owner: class}``."""
    from ..options import flag_fields

    table: dict[str, list] = {}
    for owner, cls in classes.items():
        for f in flag_fields(cls):
            table.setdefault(f.flag, []).append((owner, f))
    return table


def add_option_flags(group, table: dict[str, list]) -> None:
    """One argparse flag per entry of ``table`` (default None, so a given flag can be told apart)."""
    for flag, owners in table.items():
        f = owners[0][1]
        users = sorted({o for o, _ in owners})
        default = f.default if len({repr(g.default) for _, g in owners}) == 1 else "per method"
        helptext = f"{f.meta.get('help', flag)} (default {_show(default)}; {', '.join(users)})"
        kwargs = {"dest": f.dest, "default": None, "help": helptext}
        if isinstance(f.default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            if "choices" in f.meta:
                kwargs["choices"] = list(f.meta["choices"])
            if "metavar" in f.meta:
                kwargs["metavar"] = f.meta["metavar"]
            elif "choices" not in f.meta:
                kwargs["metavar"] = {int: "N", float: "X"}.get(f.meta.get("type"), "VALUE")
            kwargs["type"] = _typed(f.meta.get("type", str), flag)
            if f.meta.get("repeat"):
                kwargs["action"] = "append"
        aliases = [f"--{a}" for a in f.meta.get("aliases", ())]
        group.add_argument(f"--{flag}", *aliases, **kwargs)


def _typed(fn, flag):
    def parse(text):
        if fn is float:
            return finite_float(text)
        try:
            return fn(text)
        except (TypeError, ValueError) as exc:
            raise argparse.ArgumentTypeError(str(exc) or f"bad value for --{flag}: {text!r}") from None

    parse.__name__ = getattr(fn, "__name__", "value")
    return parse


def _show(value) -> str:
    if value == ():
        return "none"
    return str(value)


def apply_option_flags(args, table: dict[str, list], active: dict[str, object], context: str) -> dict[str, object]:
    """The options objects ``active`` ({owner: options}) with every given flag applied to the active
    owners that have it; a given flag no active owner has is an error naming ``context``."""
    from ..options import replace_path

    changes: dict[str, dict] = {owner: {} for owner in active}
    for flag, owners in table.items():
        value = getattr(args, owners[0][1].dest, None)
        if value is None:
            continue
        targets = [(o, f) for o, f in owners if o in active]
        if not targets:
            raise LoceditError(f"--{flag} is not used by {context}")
        for owner, f in targets:
            changes[owner][f.path] = tuple(value) if f.meta.get("repeat") else value
    out = {}
    for owner, options in active.items():
        try:
            out[owner] = replace_path(options, changes[owner]) if changes[owner] else options
        except (TypeError, ValueError) as exc:
            raise LoceditError(str(exc)) from None
    return out
