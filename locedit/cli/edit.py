"""``locedit edit`` and ``locedit invert``.

Every method's options become flags through its options dataclass (``locedit methods`` lists
them); a flag or input the chosen method (or inversion) does not use is an error, so nothing is
accepted and then ignored, and the PNG metadata records only what shaped the output.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from ..errors import LoceditError
from .common import (add_image_limit_flags, add_model_args, add_option_flags, add_output_flags, apply_option_flags,
                     finite_float, limits, option_flag_table)


def _method_classes() -> dict[str, type]:
    from ..methods import METHODS

    return {f"method {name}": m.Options for name, m in METHODS.items()}


def _inversion_classes() -> dict[str, type]:
    from ..inversion import INVERSIONS

    return {f"inversion {name}": inv.Options for name, inv in INVERSIONS.items()}


def register(sub) -> None:
    from ..inversion import INVERSIONS
    from ..methods import METHODS
    from ..options import PRESET_NAMES

    e = sub.add_parser(
        "edit", help="invert an image and edit it with a target prompt",
        description="Invert IMAGE under --source and edit it towards --target with a method from the registry "
                    "(`locedit methods` lists them with their options, defaults, papers and equations).",
        epilog="examples:\n"
               "  locedit edit cat.png --source 'a cat on the grass' --target 'a dog on the grass' \\\n"
               "      --inversion null-text --p2p refine --blend-words cat dog --out dog.png\n"
               "  locedit edit room.png --source 'a red pillow on a sofa' --target 'a green pillow on a sofa' \\\n"
               "      --method mag-edit --region green=pillow.png --preset official --out green.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("image", nargs="?", help="input image (PNG/JPEG); optional with --from-inversion")
    e.add_argument("--source", help="prompt describing the input image (default with --from-inversion: its prompt)")
    e.add_argument("--target", required=True, help="prompt describing the wanted edit")
    e.add_argument("--from-inversion", metavar="DIR", help="reuse a trajectory saved by 'locedit invert'")
    add_model_args(e, model_help=" (with --from-inversion: the model the trajectory was made with)")
    add_image_limit_flags(e)
    e.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    m = e.add_argument_group("method")
    m.add_argument("--method", default="p2p", choices=list(METHODS),
                   help="; ".join(f"{k}: {v.summary}" for k, v in METHODS.items()) + " (default p2p)")
    m.add_argument("--preset", choices=PRESET_NAMES,
                   help="start every option of the method and inversion from the paper's reading or the authors' "
                        "code's (default: locedit's defaults, the paper's where it is explicit; docs/conformance.md)")
    m.add_argument("--inversion", choices=list(INVERSIONS),
                   help="how the image is inverted (default null-text; not with methods that invert themselves, "
                        "such as locinv)")
    i = e.add_argument_group("inputs (each method uses some; see `locedit methods`)")
    i.add_argument("--mask", action="append", default=[],
                   help="PNG mask of the region to edit (white = edit), the image's size; the local blend keeps "
                        "everything outside it (repeatable: the union is used)")
    i.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                   help="a box (input pixels, exclusive ends) used like --mask (repeatable)")
    i.add_argument("--mask-from", choices=["diffedit"],
                   help="make the mask instead of giving it: diffedit = DiffEdit's mask from the two prompts' noise "
                        "estimates (its defaults and --seed), for any method that takes --mask")
    i.add_argument("--blend-words", nargs=2, metavar=("SRC", "TGT"),
                   help="local blend from attention: keep everything outside the maps of SRC (source) and TGT (target)")
    i.add_argument("--region", action="append", default=[], metavar="WORD=MASK",
                   help="tie a prompt word to its region: WORD=mask.png or WORD=x0,y0,x1,y1 (repeatable); target "
                        "words for mag-edit and mde-edit (objects), source nouns for locinv")
    i.add_argument("--attribute", action="append", default=[], metavar="WORD=MASK",
                   help="mde-edit: an attribute word (colour, texture) and its region (repeatable)")
    i.add_argument("--bind", action="append", default=[], metavar="ADJ:NOUN",
                   help="locinv: bind an adjective to a region noun (repeatable)")
    o = e.add_argument_group("method and inversion options (defaults per method; `locedit methods`)")
    add_option_flags(o, option_flag_table({**_method_classes(), **_inversion_classes()}))
    x = e.add_argument_group("SPDInv editing-side extras (any method; off by default)")
    x.add_argument("--npi-null", action="store_true", help="use the source prompt as the null embedding")
    x.add_argument("--proximal", type=finite_float, nargs="?", const=0.7, default=None, metavar="Q",
                   help="soft-threshold the guidance difference at its Q-quantile (0.7 when no Q)")
    x.add_argument("--inversion-guidance", type=int, nargs="?", const=400, default=None, metavar="T",
                   help="below timestep T (400 when no T) pull unedited latents onto the inversion; needs --proximal")
    e.add_argument("--grad-checkpointing", action="store_true", help=GRAD_CHECKPOINTING_HELP)
    out = e.add_argument_group("output")
    out.add_argument("--out", default="edit.png",
                     help="output image file, .png (default edit.png), .jpg or .webp; folders are --out-dir")
    out.add_argument("--panel", metavar="PNG", help="also write a side-by-side PNG: source | edit | mask "
                     "(the user mask, or the local-blend mask, or the edit's change when there is neither)")
    out.add_argument("--save-attention", metavar="PNG",
                     help="write the edited words' cross-attention maps (map level, averaged over steps) as a grid")
    out.add_argument("--attention-words", nargs="+", metavar="WORD",
                     help="the target words whose maps --save-attention shows (default: the region, attribute or "
                          "blend words, else the words the target adds)")
    add_output_flags(out)
    e.add_argument("--spec", metavar="FILE",
                   help="JSON (or YAML, with PyYAML) object of options, keyed by long option name without "
                        "'--' (e.g. {\"region\": [\"dog=dog.png\"], \"method\": \"mag-edit\"}); "
                        "flags given on the command line win")
    e.set_defaults(run=cmd_edit)

    v = sub.add_parser(
        "invert", help="invert an image and save the trajectory for later edits",
        description="Invert IMAGE under --prompt; save trajectory.safetensors and manifest.json in --out.",
        epilog="example: locedit invert cat.png --source 'a cat on the grass' --inversion spd --out-dir cat_inv/ && "
               "locedit edit --from-inversion cat_inv/ --target 'a dog on the grass' --out dog.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("image", help="input image (PNG/JPEG)")
    v.add_argument("--source", "--prompt", dest="prompt", required=True,
                   help="prompt describing the image (the edit's --source)")
    add_model_args(v)
    add_image_limit_flags(v)
    v.add_argument("--guidance", type=finite_float, default=7.5,
                   help="the editing CFG scale the inversion prepares for (null-text; default 7.5)")
    v.add_argument("--inversion", default="null-text", choices=list(INVERSIONS), help="(default null-text)")
    v.add_argument("--preset", choices=PRESET_NAMES, help="the inversion's options from its paper or its authors' code")
    g = v.add_argument_group("inversion options")
    add_option_flags(g, option_flag_table(_inversion_classes()))
    v.add_argument("--grad-checkpointing", action="store_true", help=GRAD_CHECKPOINTING_HELP)
    v.add_argument("--out-dir", "--out", dest="out", required=True,
                   help="output folder (manifest.json, trajectory.safetensors); --out is the same")
    add_output_flags(v)
    v.set_defaults(run=cmd_invert)


GRAD_CHECKPOINTING_HELP = ("recompute the UNet's activations in each backward pass (null-text, SPDInv, LocInv's token "
                           "learning, MAG-Edit/MDE-Edit guidance) instead of keeping them: less memory, slower; "
                           "refused where nothing takes gradients")


def _inversion_options(args, name: str, context: str):
    from ..inversion import INVERSIONS
    from ..options import preset

    options = preset(INVERSIONS[name].Options, args.preset)
    key = f"inversion {name}"
    return apply_option_flags(args, option_flag_table(_inversion_classes()), {key: options}, context)[key]


def cmd_invert(args) -> dict:
    from dataclasses import asdict

    from .. import pipeline
    from ..fileio import _umask, load_image
    from .common import fit_image, load_bundle, progress

    options = _inversion_options(args, args.inversion, f"--inversion {args.inversion}")
    if not args.prompt.strip():
        raise LoceditError("--source is empty")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise LoceditError(f"--out-dir {str(out)!r} is a file; give a folder")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LoceditError(f"--out-dir {str(out)!r}: {exc.strerror or exc}") from None
    if not os.access(out.parent, os.W_OK | os.X_OK) or (out.is_dir() and not os.access(out, os.W_OK | os.X_OK)):
        raise LoceditError(f"--out-dir {str(out)!r} is not writable")
    image = load_image(args.image, **limits(args))
    bundle = load_bundle(args)
    fit, fitted = fit_image(bundle, image, args.fit)
    traj = pipeline.invert(bundle, fitted, args.prompt, args.inversion, args.steps, args.guidance, options,
                           progress(args), grad_checkpointing=args.grad_checkpointing)
    # written next to the destination (same filesystem), then renamed into place
    tmp = Path(tempfile.mkdtemp(prefix=".locedit-inv-", dir=out.parent))
    try:
        traj.save(tmp, extra={"image": {"height": fit.height, "width": fit.width, "fit": fit.mode, "source": str(args.image)},
                              "options": asdict(options), "preset": args.preset})
        mode = 0o666 & ~_umask()
        for f in tmp.iterdir():
            os.chmod(f, mode)
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    except OSError as exc:
        raise LoceditError(f"cannot write {str(out)!r}: {exc.strerror or exc}") from None
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "method": traj.method, "unet_calls": traj.stats["unet_calls"],
            "seconds": round(traj.stats["seconds"], 3)}


def _given_inputs(args) -> set[str]:
    given = set()
    if args.mask or args.box or args.mask_from:
        given.add("mask")
    for name in ("blend_words", "region", "attribute", "bind"):
        if getattr(args, name):
            given.add({"region": "regions", "attribute": "attributes", "bind": "pairs"}.get(name, name))
    return given


def cmd_edit(args) -> dict:
    import torch

    from .. import __version__, pipeline
    from ..fileio import OutputSet, box_mask, check_output, check_user_mask, load_image, load_mask, region_spec
    from ..imaging import Fit
    from ..inversion import Trajectory
    from ..masks import Region
    from ..methods import METHODS
    from ..methods.base import INPUT_FLAGS
    from ..options import describe, preset
    from .common import load_bundle, progress

    method = METHODS[args.method]
    if not args.target.strip():
        raise LoceditError("--target is empty")
    if args.source is not None and not args.source.strip():
        raise LoceditError("--source is empty")
    check_output(args.out)
    if args.panel:
        check_output(args.panel, "--panel")
    if args.save_attention:
        check_output(args.save_attention, "--save-attention")
    elif args.attention_words:
        raise LoceditError("--attention-words needs --save-attention (the file its maps go to)")
    if len({str(Path(p).resolve()) for p in (args.out, args.panel, args.save_attention) if p}) < \
            len([p for p in (args.out, args.panel, args.save_attention) if p]):
        raise LoceditError("--out, --panel and --save-attention must be different files")
    # ---- what the method uses, before anything is loaded --------------------------------------------
    for name in method.unused(_given_inputs(args)):
        raise LoceditError(f"{INPUT_FLAGS[name]} is not used by --method {args.method}")
    if args.inversion and args.from_inversion:
        raise LoceditError("--inversion and --from-inversion: the saved trajectory is already inverted")
    inversion = args.inversion or "null-text"
    table = option_flag_table({**_method_classes(), **_inversion_classes()})
    key = f"method {args.method}"
    # the method's options say whether it runs on an inversion (most by their inputs, Blended Latent
    # Diffusion by its noise option): read them first, then refuse inversion flags it would ignore
    inversion_key = f"inversion {inversion}"
    from ..inversion import INVERSIONS

    candidates = {key: preset(method.Options, args.preset), inversion_key: preset(INVERSIONS[inversion].Options, args.preset)}
    first_context = f"--method {args.method}" + (f" with --inversion {inversion}" if "inversion" in method.uses else "")
    uses_inversion = method.takes_inversion(apply_option_flags(args, table, candidates, first_context)[key])
    if args.inversion and not uses_inversion:
        raise LoceditError(f"--inversion is not used by --method {args.method} (it makes its own inversion"
                           f"{' with these options' if 'inversion' in method.uses else ''})")
    active = {key: candidates[key]}
    context = f"--method {args.method}"
    if uses_inversion and not args.from_inversion:
        active[inversion_key] = candidates[inversion_key]
        context += f" with --inversion {inversion}"
    applied = apply_option_flags(args, table, active, context)
    options = applied[key]
    inversion_options = applied.get(inversion_key)
    try:
        edit_options = pipeline.EditOptions(guidance=args.guidance, npi_null=args.npi_null,
                                            proximal_quantile=args.proximal, inversion_guidance_t=args.inversion_guidance,
                                            grad_checkpointing=args.grad_checkpointing)
    except ValueError as exc:
        raise LoceditError(str(exc)) from None
    pairs = []
    for spec in args.bind:
        adj, sep, noun = spec.partition(":")
        if not sep or not adj.strip() or not noun.strip():
            raise LoceditError(f"--bind {spec!r} is not ADJ:NOUN")
        pairs.append((adj.strip(), noun.strip()))

    # ---- files -----------------------------------------------------------------------------------------
    trajectory, manifest = None, None
    if args.from_inversion:
        trajectory, manifest = Trajectory.load(args.from_inversion)
        if args.model is None and trajectory.model:
            args.model = trajectory.model  # the model the trajectory was made with
        source = args.source or trajectory.prompt
        size = manifest.get("image", {})
        image = load_image(args.image, **limits(args)) if args.image else None
    else:
        if not args.image:
            raise LoceditError("edit needs IMAGE (or --from-inversion DIR)")
        if not args.source:
            raise LoceditError("edit needs --source (the prompt that describes the input image)")
        source = args.source
        image = load_image(args.image, **limits(args))
    if image is not None:
        height, width = image.shape[-2:]
    else:
        height, width = size.get("height"), size.get("width")
    masks = [load_mask(p, **limits(args)) for p in args.mask] + [box_mask(b, height, width) for b in args.box]
    for path, m in zip(list(args.mask) + list(args.box), masks):
        check_user_mask(m, path, height, width)
    mask = torch.stack(masks).amax(dim=0) if masks else None
    regions = [region_spec(spec, height, width, **limits(args)) for spec in args.region]
    attributes = [region_spec(spec, height, width, **limits(args)) for spec in args.attribute]

    bundle = load_bundle(args)
    if trajectory is not None:
        if trajectory.model and trajectory.model != bundle.name:
            raise LoceditError(f"the trajectory was made with model {trajectory.model!r}, not {bundle.name!r} "
                               "(pass --model)")
        trajectory.check_against(bundle)
    fit = Fit.plan(height, width, bundle.image_size, manifest["image"].get("fit", args.fit) if manifest else args.fit)
    fitted = fit.to_model(image) if image is not None else None
    fitted_mask = fit.to_model(mask, binary=True) if mask is not None else None
    if args.mask_from:
        if mask is not None:
            raise LoceditError("--mask-from makes the mask: not with --mask or --box")
        if fitted is None:
            raise LoceditError("--mask-from needs IMAGE (the mask is made from it)")
        from ..methods.diffedit import DiffEditOptions, diffedit_mask

        with torch.no_grad():
            small = diffedit_mask(bundle, bundle.encode_image(fitted), source, args.target, args.steps,
                                  DiffEditOptions(), args.seed)
        if not small.any():
            raise LoceditError("the DiffEdit mask is empty: the two prompts' noise estimates differ nowhere above "
                               "its threshold")
        fitted_mask = torch.nn.functional.interpolate(small, size=(bundle.image_size,) * 2).cpu()  # nearest
        mask = fit.from_model(fitted_mask)
    fitted_regions = [Region(w, fit.to_model(m, binary=True)) for w, m in regions]
    fitted_attrs = [Region(w, fit.to_model(m, binary=True)) for w, m in attributes]
    words = [w for w, _ in regions + attributes] if "source_regions" not in method.uses else []
    if args.attention_words:
        words = list(args.attention_words)
    if not words and args.blend_words:
        words = [args.blend_words[1]]
    if not words:
        src_words = {w.lower() for w in source.split()}
        words = [w for w in args.target.split() if w.lower() not in src_words][:4]
    result = pipeline.edit(
        bundle, fitted, source, args.target, method=args.method, options=options, inversion=inversion,
        inversion_options=inversion_options, trajectory=trajectory, mask=fitted_mask,
        blend_words=tuple(args.blend_words) if args.blend_words else None, regions=fitted_regions,
        attributes=fitted_attrs, pairs=pairs, record_words=tuple(words) if args.save_attention else (),
        num_steps=args.steps, edit_options=edit_options, seed=args.seed,
        # the web app passes its session's inversion cache and its progress display through args
        progress=getattr(args, "progress_fn", None) or progress(args), cache=getattr(args, "cache", None),
    )
    edited = fit.from_model(result.edited)
    meta = {
        "source": source, "target": args.target, "model": bundle.name, "method": args.method,
        "preset": args.preset, "options": describe(options),
        "steps": result.trajectory.num_steps, "seed": args.seed, "guidance": args.guidance,
        "fit": fit.mode, "dtype": args.dtype, "locedit_version": __version__,
    }
    if args.vae:
        meta["vae"] = args.vae
    if args.image:
        meta["input"] = os.path.basename(args.image)
    if uses_inversion:
        meta["inversion"] = result.trajectory.method
        if args.from_inversion:
            meta["from_inversion"] = str(args.from_inversion)
        else:
            meta["inversion_options"] = describe(inversion_options)
    extras = {k: v for k, v in describe(edit_options).items() if k != "guidance" and v not in (None, False)}
    if extras:
        meta["edit_options"] = extras
    for key, value in (("mask", [os.path.basename(p) for p in args.mask]), ("box", list(args.box)),
                       ("blend_words", list(args.blend_words or [])), ("region", list(args.region)),
                       ("attribute", list(args.attribute)), ("bind", list(args.bind)),
                       ("mask_from", args.mask_from)):
        if value:
            meta[key] = value
    outputs = OutputSet()
    if args.panel:
        panel_mask = mask
        if panel_mask is None and result.sample.blend_mask is not None:
            panel_mask = fit.from_model(torch.nn.functional.interpolate(result.sample.blend_mask.float().cpu(),
                                                                        size=(bundle.image_size,) * 2))
        source_view = image if image is not None else fit.from_model(result.source.cpu())
        if panel_mask is None:  # the change itself, normalised
            diff = (edited - source_view).abs().amax(dim=1, keepdim=True)
            panel_mask = diff / diff.max().clamp_min(1e-6)
        outputs.add(torch.cat([source_view, edited, panel_mask.expand(-1, 3, -1, -1)], dim=3), args.panel, meta)
    if args.save_attention and "attention" in result.stats:
        outputs.add(attention_grid(result.stats.pop("attention"), bundle.image_size), args.save_attention, meta)
    result.stats.pop("attention", None)
    outputs.add(edited, args.out, meta)
    outputs.commit()  # all files or none
    stats = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.stats.items() if k != "guidance_loss"}
    if "guidance_loss" in result.stats:
        hist = result.stats["guidance_loss"]
        stats["guidance_loss_first_last"] = [[round(h[0], 6), round(h[-1], 6)] for h in hist if h]
    extra = {"panel": str(args.panel)} if args.panel else {}
    return {"out": str(args.out), **extra, **meta, **stats,
            "unet_calls": stats["inversion_unet_calls"] + stats["edit_unet_calls"]}


def attention_grid(maps: dict, size: int):
    """word -> (s, s) map  ->  (1, 3, size, size * n) image, each map max-normalised, nearest-upscaled."""
    import torch
    import torch.nn.functional as F

    tiles = []
    for m in maps.values():
        m = m.float().cpu()
        m = m / m.max().clamp_min(1e-12)
        tiles.append(F.interpolate(m[None, None], size=(size, size), mode="nearest").expand(-1, 3, -1, -1))
    return torch.cat(tiles, dim=3)
