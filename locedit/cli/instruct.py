"""``locedit instruct``: InstructPix2Pix and LIME."""

from __future__ import annotations

import argparse

from .common import add_output_flags


def register(sub) -> None:
    n = sub.add_parser("instruct", help="edit an image by an instruction (InstructPix2Pix, LIME)",
                       description="Edit IMAGE by --instruction with an InstructPix2Pix model; LIME finds the region "
                                   "to edit by itself and keeps the edit inside it.",
                       epilog="example: locedit instruct room.png --instruction 'make the pillow green' --method lime "
                              "--model timbrooks/instruct-pix2pix --save-roi roi.png --out green.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    n.add_argument("image", help="input image (PNG/JPEG)")
    n.add_argument("--instruction", required=True, help="what to change, e.g. 'make the square blue'")
    n.add_argument("--method", default="lime", choices=["ip2p", "lime"], help="ip2p alone, or lime (default)")
    n.add_argument("--mask", help="lime: a PNG mask (white = edit) that replaces the found region")
    n.add_argument("--image-guidance", type=float, default=1.5, help="s_I (default 1.5)")
    n.add_argument("--text-guidance", type=float, default=None,
                   help="s_T of the edit (default: 7.5 for ip2p; 3.5 for lime's edit, 7.5 for its localisation)")
    n.add_argument("--clusters", type=int, default=8, help="lime: k-means clusters (default 8)")
    n.add_argument("--points", type=int, default=100, help="lime: top attention points (default 100)")
    n.add_argument("--save-roi", metavar="PNG", help="lime: write the region of interest it edited")
    n.add_argument("--model", default="shapes-instruct",
                   help="an InstructPix2Pix model: built-in name, local diffusers folder or hub id (default shapes-instruct)")
    n.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    n.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="network precision")
    n.add_argument("--steps", type=int, default=100, help="DDIM steps (default 100, as the LIME paper)")
    n.add_argument("--seed", type=int, default=0, help="random seed of the starting noise and k-means (default 0)")
    n.add_argument("--fit", default="pad", choices=["pad", "resize"], help="how a non-square image is fitted")
    n.add_argument("--out", default="instruct.png", help="output PNG (default instruct.png)")
    n.add_argument("--panel", metavar="PNG", help="also write source | edit | region side by side")
    add_output_flags(n)

    n.set_defaults(run=cmd_instruct)


def cmd_instruct(args) -> dict:
    from dataclasses import asdict

    import torch
    import torch.nn.functional as F

    from .common import load_bundle, progress
    from ..errors import LoceditError
    from ..fileio import check_user_mask, load_image, load_mask, save_png
    from ..imaging import Fit
    from ..instruct import IP2POptions, LIMEOptions, instruct_edit, lime_edit

    image = load_image(args.image)
    height, width = image.shape[-2:]
    mask = None
    if args.mask:
        if args.method != "lime":
            raise LoceditError("--mask is for --method lime")
        mask = load_mask(args.mask)
        check_user_mask(mask, args.mask, height, width)
    if args.clusters < 1 or args.points < 1:
        raise LoceditError("--clusters and --points must be >= 1")
    bundle = load_bundle(args)
    bundle.token_ids(args.instruction)
    if bundle.unet.config.in_channels != 8:
        raise LoceditError(f"model {bundle.name!r} is not an InstructPix2Pix model (its UNet takes "
                           f"{bundle.unet.config.in_channels} channels, not 8)")
    fit = Fit.plan(height, width, bundle.image_size, args.fit)
    fitted = fit.to_model(image)
    roi = None
    if args.method == "ip2p":
        opts = IP2POptions(args.image_guidance, 7.5 if args.text_guidance is None else args.text_guidance)
        z = instruct_edit(bundle, fitted, args.instruction, args.steps, opts, torch.Generator().manual_seed(args.seed),
                          progress=progress(args))
        options = {"ip2p": opts.__dict__}
    else:
        lopts = LIMEOptions(clusters=args.clusters, points=args.points, seed=args.seed,
                            localize_guidance=IP2POptions(args.image_guidance, 7.5),
                            edit_guidance=IP2POptions(args.image_guidance, 3.5 if args.text_guidance is None else args.text_guidance))
        res = lime_edit(bundle, fitted, args.instruction, args.steps, lopts, args.seed,
                        fit.to_model(mask, binary=True) if mask is not None else None, progress(args))
        z, roi = res.latents, res.roi
        options = {"lime": asdict(lopts)}
    edited = fit.from_model(bundle.decode_latents(z).cpu())
    meta = {"instruction": args.instruction, "model": bundle.name, "method": args.method, "steps": args.steps,
            "seed": args.seed, "options": options}
    roi_img = None
    if roi is not None:
        roi_img = fit.from_model(F.interpolate(roi.float()[None, None], size=(bundle.image_size,) * 2, mode="nearest"))
        roi_img = (roi_img > 0.5).float()
        if args.save_roi:
            save_png(roi_img.expand(-1, 3, -1, -1), args.save_roi, meta)
    if args.panel:
        third = roi_img if roi_img is not None else (edited - image).abs().amax(1, keepdim=True)
        save_png(torch.cat([image, edited, third.expand(-1, 3, -1, -1)], dim=3), args.panel, meta)
    save_png(edited, args.out, meta)
    out = {"out": str(args.out), **meta, "unet_calls": bundle.unet_calls}
    if roi is not None:
        out["roi_fraction"] = round(float(roi.float().mean()), 4)
    return out


