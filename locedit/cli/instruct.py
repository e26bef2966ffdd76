"""``locedit instruct``: InstructPix2Pix and LIME, from the instruct-method registry."""

from __future__ import annotations

import argparse

from .common import (add_image_limit_flags, add_option_flags, add_output_flags, add_vae_flag, apply_option_flags, limits,
                     option_flag_table, seed)


def _classes() -> dict[str, type]:
    from ..instruct import INSTRUCT_METHODS

    return {f"method {name}": m.Options for name, m in INSTRUCT_METHODS.items()}


def register(sub) -> None:
    from ..instruct import INSTRUCT_METHODS
    from ..options import PRESET_NAMES

    n = sub.add_parser("instruct", help="edit an image by an instruction (InstructPix2Pix, LIME)",
                       description="Edit IMAGE by --instruction with an InstructPix2Pix model; LIME finds the region "
                                   "to edit by itself and keeps the edit inside it.",
                       epilog="examples:\n"
                              "  locedit instruct room.png --instruction 'make the pillow green' --method lime \\\n"
                              "      --model timbrooks/instruct-pix2pix --save-roi roi.png --out green.png\n"
                              "  locedit instruct room.png --instruction 'make the pillow green' --preset official "
                              "--steps 30 --out green.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    n.add_argument("image", help="input image (PNG/JPEG)")
    n.add_argument("--instruction", required=True, help="what to change, e.g. 'make the square blue'")
    n.add_argument("--method", default="lime", choices=list(INSTRUCT_METHODS),
                   help="; ".join(f"{k}: {v.summary}" for k, v in INSTRUCT_METHODS.items()) + " (default lime)")
    n.add_argument("--preset", choices=PRESET_NAMES,
                   help="every option from the paper's reading or the authors' code's (docs/conformance.md)")
    n.add_argument("--mask", help="lime: a PNG mask (white = edit) that replaces the found region")
    g = n.add_argument_group("method options (defaults per method; `locedit methods`)")
    add_option_flags(g, option_flag_table(_classes()))
    n.add_argument("--save-roi", metavar="PNG", help="lime: write the region of interest it edited")
    n.add_argument("--model", "--instruct-model", dest="model", default="shapes-instruct",
                   help="an InstructPix2Pix model: built-in name, local diffusers folder or hub id (default "
                        "shapes-instruct; --instruct-model, the bench's name for it, is the same)")
    n.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    n.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="network precision")
    add_vae_flag(n)
    n.add_argument("--steps", type=int, default=100, help="sampling steps (default 100, as the LIME paper)")
    n.add_argument("--seed", type=seed, default=0, help="random seed of the starting noise and k-means (default 0)")
    add_image_limit_flags(n)
    n.add_argument("--fit", default="pad", choices=["pad", "resize"], help="how a non-square image is fitted")
    n.add_argument("--out", default="instruct.png",
                   help="output image file, .png (default instruct.png), .jpg or .webp")
    n.add_argument("--panel", metavar="PNG", help="also write source | edit | region side by side")
    add_output_flags(n)
    n.set_defaults(run=cmd_instruct)


def parse_instruct(args):
    """The parsed ``locedit instruct`` command line as an :class:`locedit.spec.InstructSpec`."""
    from ..errors import LoceditError
    from ..fileio import MAX_BYTES, MAX_PIXELS
    from ..instruct import INSTRUCT_METHODS
    from ..options import preset
    from ..spec import InstructSpec

    method = INSTRUCT_METHODS[args.method]
    if not args.instruction.strip():
        raise LoceditError("--instruction is empty")
    if args.mask and "mask" not in method.uses:
        raise LoceditError(f"--mask is not used by --method {args.method}")
    if args.save_roi and not method.makes_roi:
        raise LoceditError(f"--save-roi is not used by --method {args.method}")
    key = f"method {args.method}"
    options = apply_option_flags(args, option_flag_table(_classes()), {key: preset(method.Options, args.preset)},
                                 f"--method {args.method}")[key]
    lim = limits(args)
    return InstructSpec(args.instruction, args.image, args.method, options, args.preset, args.mask, args.model, args.vae,
                        args.device, args.dtype, args.steps, args.seed, args.fit,
                        None if lim["max_pixels"] == MAX_PIXELS else lim["max_pixels"],
                        None if lim["max_bytes"] == MAX_BYTES else lim["max_bytes"])


def cmd_instruct(args) -> dict:
    """``locedit instruct``: the command line parsed into a spec, run by the library, its files written."""
    from .. import api
    from ..fileio import OutputSet, check_output
    from .common import progress, quiet_libraries

    check_output(args.out)
    for flag, path in (("--panel", args.panel), ("--save-roi", args.save_roi)):
        if path:
            check_output(path, flag)
    def before_load():  # once the inputs are checked: a bad input is refused before these heavy imports
        import torch

        quiet_libraries(getattr(args, "verbose", False))
        torch.manual_seed(args.seed)  # the edge owns global state; the core takes explicit generators

    spec = parse_instruct(args)
    result = api.instruct(spec, progress=progress(args), before_load=before_load)
    outputs = OutputSet()
    if result.roi is not None and args.save_roi:
        outputs.add(result.roi.expand(-1, 3, -1, -1), args.save_roi, result.meta)
    if args.panel:
        outputs.add(result.panel(), args.panel, result.meta)
    outputs.add(result.edited, args.out, result.meta)
    outputs.commit()  # all files or none
    return {"out": str(args.out), **result.meta, **result.stats}
