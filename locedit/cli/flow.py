"""``locedit flow`` (alias ``locedit flowedit``): the flow editors (:data:`locedit.flow.FLOW_EDITORS`)
on a FLUX or Stable Diffusion 3 model (issue 33), and the same editors run by ``locedit edit --method
NAME`` (:func:`cmd_edit_flow`), which builds the same :class:`~locedit.spec.FlowSpec`.
Each editor's flags come from its options dataclass; a flag the chosen editor does not have is
refused in one line, before any model is loaded."""

from __future__ import annotations

import argparse

from ..errors import LoceditError
from .common import (NO_VALUE, add_image_limit_flags, add_option_flags, add_output_flags, add_vae_flag,
                     apply_option_flags, limits, option_flag_table, seed)


def _editors():
    from ..flow import FLOW_EDITORS

    return FLOW_EDITORS


def _table():
    return option_flag_table({name: e.Options for name, e in _editors().items()})


def register(sub) -> None:
    from ..diffusion.quantize import MODES as QUANTIZE_MODES

    editors = _editors()
    lines = "\n".join(f"  {name:15s} {e.summary} [{', '.join(e.families)}]" for name, e in editors.items())
    f = sub.add_parser(
        "flow", aliases=["flowedit"], help="edit with a flow editor (" + ", ".join(editors) + ") on a FLUX or SD3 model",
        description="Edit an image with one of the flow-matching transformers' editors, on a FLUX.1 or Stable "
                    "Diffusion 3 diffusers model. Unset settings take the editor's defaults (the paper's, or its "
                    "authors' code's: docs/conformance.md). --mask keeps everything outside it on the source "
                    "(locedit's addition for every editor but KV-Edit, which needs one); --blend-words "
                    "makes that mask from the words' attention maps.\n\n"
                    "editors:\n" + lines,
        epilog="examples:\n"
               "  locedit flow scene.png --model shapes-flow --source 'a red circle on a gray background' "
               "--target 'a blue circle on a gray background' --out blue.png\n"
               "  locedit flow cat.png --model black-forest-labs/FLUX.1-dev --source 'a cat on the grass' "
               "--target 'a dog on the grass' --mask cat-mask.png --out dog.png\n"
               "  locedit flow cat.png --method kv-edit --model black-forest-labs/FLUX.1-dev --source 'a cat' "
               "--target 'a dog' --mask cat-mask.png --skip 4 --out dog.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("image", help="the image to edit (any size: fitted to the model's square and back)")
    f.add_argument("--method", default="flowedit", choices=list(editors), help="the editor (default flowedit)")
    f.add_argument("--source", required=True, help="the prompt that describes the image")
    f.add_argument("--target", required=True, help="the prompt of the edit")
    f.add_argument("--model", required=True, help="a FLUX.1 or Stable Diffusion 3 diffusers folder or hub id, or "
                                                 "shapes-flow (built in: the shapes world's FLUX model)")
    add_vae_flag(f)
    f.add_argument("--mask", help="PNG mask (white = may change), the image's size: the outside stays the source's")
    f.add_argument("--blend-words", nargs=2, metavar=("SRC", "TGT"),
                   help="a mask from the words' joint-attention maps instead of --mask: the source word in "
                        "--source and the target word in --target, P2P's local-blend rule (docs/flow.md)")
    f.add_argument("--out", required=True, help="the edited image (.png with metadata, .jpg, .webp)")
    f.add_argument("--panel", metavar="PNG", help="also write a side-by-side PNG: source | edit | mask (the user's, "
                                                   "or the blend words', or the edit's change without either)")
    f.add_argument("--seed", type=seed, default=0, help="the noise draws' seed (default 0)")
    f.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    f.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="network precision")
    f.add_argument("--fit", default="pad", choices=["pad", "resize"], help="how a non-square image is fitted")
    f.add_argument("--quantize", choices=list(QUANTIZE_MODES), help="quantise the transformer's weights (torchao int8 weight-only: "
                                                         "FLUX.1-dev in 11 GiB instead of 22; needs locedit[quant])")
    f.add_argument("--offload-text", action="store_true",
                   help="keep the text encoders on the CPU between encodings (T5-XXL: 9 GiB off the accelerator)")
    add_option_flags(f.add_argument_group("editor settings"), _table())
    add_image_limit_flags(f)
    add_output_flags(f)
    f.set_defaults(run=cmd_flow)


def cmd_flow(args) -> dict:
    entry = _editors()[args.method]
    options = apply_option_flags(args, _table(), {entry.name: entry.Options()}, f"--method {entry.name}")[entry.name]
    return run_flow_spec(flow_spec(args, options, args.model, args.mask, args.vae), args)


def flow_spec(args, options, model: str, mask: str | None, vae: str | None):
    """The :class:`~locedit.spec.FlowSpec` of the parsed command line (``locedit flow`` or ``locedit
    edit`` with a flow editor), checked as far as its text allows."""
    from .. import api
    from ..fileio import MAX_BYTES, MAX_PIXELS
    from ..spec import FlowSpec

    lim = limits(args)
    spec = FlowSpec(args.image, args.source, args.target, model, method=args.method, options=options, mask=mask,
                    blend_words=tuple(args.blend_words) if args.blend_words else None, vae=vae,
                    device=args.device, dtype=args.dtype, quantize=args.quantize, offload_text=args.offload_text,
                    seed=args.seed, fit=args.fit,
                    max_pixels=None if lim["max_pixels"] == MAX_PIXELS else lim["max_pixels"],
                    max_bytes=None if lim["max_bytes"] == MAX_BYTES else lim["max_bytes"])
    api.check_flow(spec)
    return spec


def run_flow_spec(spec, args) -> dict:
    """Run ``spec`` and write ``--out`` and ``--panel`` (checked before the model loads; both or none)."""
    from .. import api
    from ..fileio import OutputSet
    from .common import check_outputs, progress, quiet_libraries

    check_outputs(args)
    result = api.flow_edit(spec, progress=progress(args), before_load=lambda: quiet_libraries(args.verbose))
    out = OutputSet()
    if args.panel:
        out.add(result.panel(), args.panel, result.meta)
    out.add(result.edited, args.out, result.meta)
    out.commit()
    return {"out": args.out, **({"panel": args.panel} if args.panel else {}), "model_calls": result.model_calls}


# ``locedit edit`` with a flow editor: its own flags that a flow editor has as options (set there when
# given), and those no flow editor reads (refused when given: nothing accepted and then ignored)
SHARED_FLAGS = ("steps", "guidance", "inversion_guidance")
UNET_ONLY_FLAGS = ("from_inversion", "inversion", "preset", "box", "region", "attribute", "bind", "mask_from",
                   "npi_null", "proximal", "grad_checkpointing", "save_attention", "attention_words")


def edit_table() -> dict:
    """The flow editors' option flags as ``locedit edit`` adds them: without :data:`SHARED_FLAGS`,
    which are ``edit``'s own flags there."""
    return {flag: owners for flag, owners in _table().items() if flag.replace("-", "_") not in SHARED_FLAGS}


def cmd_edit_flow(args, table: dict) -> dict:
    """``locedit edit --method NAME`` with a flow editor: the same :class:`~locedit.spec.FlowSpec` as
    ``locedit flow``'s, from ``edit``'s flags (its ``--steps``, ``--guidance`` and
    ``--inversion-guidance`` set the editor's options of those names). ``table``: ``edit``'s whole
    option-flag table, so that a UNet method's or inversion's option is refused too."""
    from dataclasses import fields, replace

    entry = _editors()[args.method]
    context = f"--method {entry.name}"
    for dest in UNET_ONLY_FLAGS:
        if getattr(args, dest, None) not in (None, False, [], ()):
            raise LoceditError(f"--{dest.replace('_', '-')} is not used by {context} (a flow editor: docs/flow.md)")
    if args.mask_rule != "half":
        raise LoceditError(f"--mask-rule {args.mask_rule} is not used by {context} (a flow editor: docs/flow.md)")
    if len(args.mask) > 1:
        raise LoceditError(f"{context} takes one --mask")
    if args.image is None or args.source is None:
        raise LoceditError(f"{context} needs IMAGE and --source")
    if args.model is None:
        raise LoceditError(f"{context} needs --model: a FLUX.1 or Stable Diffusion 3 diffusers folder or hub id, "
                           "or shapes-flow")
    options = apply_option_flags(args, table, {entry.name: entry.Options()}, context)[entry.name]
    names = {f.name for f in fields(options)}
    for dest in SHARED_FLAGS:
        value, flag = getattr(args, dest), "--" + dest.replace("_", "-")
        if value is not None and dest not in names:
            alike = [f"--{n.replace('_', '-')}" for n in sorted(names) if n.endswith(dest.split("_")[-1])]
            raise LoceditError(f"{flag} is not used by {context}" + (f" (it has {', '.join(alike)})" if alike else ""))
        if value is not None and dest == "inversion_guidance" and value == NO_VALUE:  # SPDInv's bare form
            raise LoceditError(f"{flag} needs a value with {context}")
        if value is not None:
            options = replace(options, **{dest: value})
    return run_flow_spec(flow_spec(args, options, args.model, args.mask[0] if args.mask else None, args.vae), args)
