"""``locedit instruct``: InstructPix2Pix and LIME, from the instruct-method registry."""

from __future__ import annotations

import argparse
import os

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


def cmd_instruct(args) -> dict:
    import torch
    import torch.nn.functional as F

    from .. import __version__
    from ..errors import LoceditError
    from ..fileio import OutputSet, check_output, check_user_mask, load_image, load_mask
    from ..imaging import Fit
    from ..instruct import INSTRUCT_METHODS
    from ..options import describe, preset
    from .common import load_bundle, progress

    method = INSTRUCT_METHODS[args.method]
    if not args.instruction.strip():
        raise LoceditError("--instruction is empty")
    check_output(args.out)
    for flag, path in (("--panel", args.panel), ("--save-roi", args.save_roi)):
        if path:
            check_output(path, flag)
    if args.mask and "mask" not in method.uses:
        raise LoceditError(f"--mask is not used by --method {args.method}")
    if args.save_roi and not method.makes_roi:
        raise LoceditError(f"--save-roi is not used by --method {args.method}")
    key = f"method {args.method}"
    options = apply_option_flags(args, option_flag_table(_classes()), {key: preset(method.Options, args.preset)},
                                 f"--method {args.method}")[key]
    image = load_image(args.image, **limits(args))
    height, width = image.shape[-2:]
    mask = None
    if args.mask:
        mask = load_mask(args.mask, **limits(args))
        check_user_mask(mask, args.mask, height, width)
    bundle = load_bundle(args)
    bundle.token_ids(args.instruction)
    if bundle.unet.config.in_channels != 8:
        raise LoceditError(f"model {bundle.name!r} is not an InstructPix2Pix model (its UNet takes "
                           f"{bundle.unet.config.in_channels} channels, not 8)")
    fit = Fit.plan(height, width, bundle.image_size, args.fit)
    res = method.run(bundle, fit.to_model(image), args.instruction, args.steps, options, args.seed,
                     fit.to_model(mask, binary=True) if mask is not None else None,
                     getattr(args, "progress_fn", None) or progress(args))  # the web app's progress display
    edited = fit.from_model(bundle.decode_latents(res.latents).cpu())
    meta = {"instruction": args.instruction, "model": bundle.name, "method": args.method, "preset": args.preset,
            "options": describe(options), "steps": args.steps, "seed": args.seed, "fit": fit.mode,
            "dtype": args.dtype, "input": os.path.basename(args.image), "locedit_version": __version__}
    if args.vae:
        meta["vae"] = args.vae
    if args.mask:
        meta["mask"] = os.path.basename(args.mask)
    roi_img = None
    outputs = OutputSet()
    if res.roi is not None:
        roi_img = fit.from_model(F.interpolate(res.roi.float()[None, None], size=(bundle.image_size,) * 2,
                                               mode="nearest"))
        roi_img = (roi_img > 0.5).float()
        if args.save_roi:
            outputs.add(roi_img.expand(-1, 3, -1, -1), args.save_roi, meta)
    if args.panel:
        third = roi_img if roi_img is not None else (edited - image).abs().amax(1, keepdim=True)
        outputs.add(torch.cat([image, edited, third.expand(-1, 3, -1, -1)], dim=3), args.panel, meta)
    outputs.add(edited, args.out, meta)
    outputs.commit()  # all files or none
    out = {"out": str(args.out), **meta, "unet_calls": bundle.unet_calls}
    if res.roi is not None:
        out["roi_fraction"] = round(float(res.roi.float().mean()), 4)
    return out
