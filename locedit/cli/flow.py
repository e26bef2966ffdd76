"""``locedit flowedit``: FlowEdit on a FLUX or Stable Diffusion 3 model (issue 33; the flow editors'
entry until they join ``locedit edit``)."""

from __future__ import annotations

import argparse

from .common import _positive_int, add_image_limit_flags, add_output_flags, finite_float, seed


def register(sub) -> None:
    f = sub.add_parser(
        "flowedit", help="FlowEdit (inversion-free) on a FLUX or SD3 model, optionally inside a mask",
        description="FlowEdit (Kulikov et al., ICCV 2025, Alg. 1): an ODE from the image straight to the target "
                    "prompt, no inversion, on a FLUX.1 or Stable Diffusion 3 diffusers model. Unset settings take the "
                    "paper's per-family defaults (SD3: 50 steps, n_max 33, scales 3.5 / 13.5; FLUX: 28 steps, "
                    "n_max 24, 1.5 / 5.5). --mask keeps everything outside it on the source (locedit's addition).",
        epilog="example: locedit flowedit cat.png --model black-forest-labs/FLUX.1-dev --source 'a cat on the grass' "
               "--target 'a dog on the grass' --mask cat-mask.png --out dog.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("image", help="the image to edit (any size: fitted to the model's square and back)")
    f.add_argument("--source", required=True, help="the prompt that describes the image")
    f.add_argument("--target", required=True, help="the prompt of the edit")
    f.add_argument("--model", required=True, help="a FLUX.1 or Stable Diffusion 3 diffusers folder or hub id")
    f.add_argument("--mask", help="PNG mask (white = may change), the image's size: the outside stays the source's")
    f.add_argument("--out", required=True, help="the edited image (.png with metadata, .jpg, .webp)")
    f.add_argument("--steps", type=_positive_int, help="T, the schedule's steps (default per family)")
    f.add_argument("--n-max", type=_positive_int, help="edit over the last n_max steps (default per family)")
    f.add_argument("--n-min", type=int, default=0, help="the last n_min steps sample the target plainly (default 0)")
    f.add_argument("--n-avg", type=_positive_int, default=1, help="noise draws averaged per step (default 1)")
    f.add_argument("--src-guidance", type=finite_float, help="source scale (default per family)")
    f.add_argument("--tar-guidance", type=finite_float, help="target scale (default per family)")
    f.add_argument("--seed", type=seed, default=0, help="the noise draws' seed (default 0)")
    f.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    f.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="network precision")
    f.add_argument("--fit", default="pad", choices=["pad", "resize"], help="how a non-square image is fitted")
    add_image_limit_flags(f)
    add_output_flags(f)
    f.set_defaults(run=cmd_flowedit)


def cmd_flowedit(args) -> dict:
    from ..errors import LoceditError
    from ..fileio import check_output, header_size
    from ..flow import FlowEditOptions
    from .common import limits

    if not args.source.strip() or not args.target.strip():
        raise LoceditError("--source and --target must not be empty")
    options = FlowEditOptions(steps=args.steps, n_max=args.n_max, n_min=args.n_min, n_avg=args.n_avg,
                              src_guidance=args.src_guidance, tar_guidance=args.tar_guidance)
    check_output(args.out)
    height, width = header_size(args.image, "image", **limits(args))
    if args.mask:
        h, w = header_size(args.mask, "mask", **limits(args))
        if (h, w) != (height, width):
            raise LoceditError(f"mask {args.mask!r} is {w}x{h} but the image is {width}x{height}")
    return _run(args, options)


def _run(args, options) -> dict:
    import torch
    import torch.nn.functional as F

    from ..diffusion import load_model
    from ..diffusion.flow_model import FlowBundle
    from ..errors import LoceditError
    from ..fileio import OutputSet, check_user_mask, load_image, load_mask
    from ..flow import flowedit
    from ..imaging import Fit
    from .common import limits, progress, quiet_libraries

    image = load_image(args.image, **limits(args))
    mask = load_mask(args.mask, **limits(args)) if args.mask else None
    if mask is not None:
        check_user_mask(mask, args.mask, *image.shape[-2:])
    quiet_libraries(args.verbose)
    bundle = load_model(args.model, args.device, args.dtype)
    if not isinstance(bundle, FlowBundle):
        raise LoceditError(f"flowedit runs on FLUX and SD3 models; {args.model!r} is a {bundle.family} UNet model "
                           "(its editors are 'locedit edit --method ...')")
    resolved = options.resolved(bundle.family)
    fit = Fit.plan(image.shape[-2], image.shape[-1], bundle.image_size, args.fit)
    z = bundle.encode_image(fit.to_model(image))
    latent_mask = None
    if mask is not None:
        latent_mask = (F.interpolate(fit.to_model(mask, binary=True), size=z.shape[-2:], mode="area") > 0.5).float()
    with torch.no_grad():
        edited = fit.from_model(bundle.decode_latents(flowedit(bundle, z, args.source, args.target, resolved, args.seed,
                                                               progress(args), latent_mask)).cpu())
    meta = {"method": "flowedit", "model": args.model, "source": args.source, "target": args.target,
            "options": {k: getattr(resolved, k) for k in ("steps", "n_max", "n_min", "n_avg", "src_guidance",
                                                          "tar_guidance")}, "seed": args.seed, "fit": fit.mode}
    if args.mask:
        meta["mask"] = args.mask
    out = OutputSet()
    out.add(edited, args.out, meta)
    out.commit()
    return {"out": args.out, "model_calls": bundle.unet_calls}
