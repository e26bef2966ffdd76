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
from ..spec import DEFAULT_INVERSION
from .common import (NO_VALUE, add_image_limit_flags, add_model_args, add_option_flags, add_output_flags,
                     apply_option_flags, check_outputs, finite_float, limits, option_flag_table)


def _method_classes() -> dict[str, type]:
    from ..methods import METHODS

    return {f"method {name}": m.Options for name, m in METHODS.items()}


def _inversion_classes() -> dict[str, type]:
    from ..inversion import INVERSIONS

    return {f"inversion {name}": inv.Options for name, inv in INVERSIONS.items()}


def _edit_table() -> dict:
    """``locedit edit``'s option flags: every method's and inversion's, and the flow editors' (less the
    flags ``edit`` has of its own, :data:`locedit.cli.flow.SHARED_FLAGS`)."""
    from .flow import edit_table

    table = option_flag_table({**_method_classes(), **_inversion_classes()})
    for flag, owners in edit_table().items():
        table.setdefault(flag, []).extend(owners)
    return table


def _flow_inversion_classes() -> dict[str, type]:
    from ..flow.inversions import FLOW_INVERSIONS

    return {f"inversion {name}": inv.Options for name, inv in FLOW_INVERSIONS.items()}


def register(sub) -> None:
    """``locedit edit`` (its inputs and outputs in :func:`_edit_inputs_and_outputs`) and ``locedit invert``."""
    from ..flow import FLOW_EDITORS
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
               "      --method mag-edit --region green=pillow.png --preset official --out green.png\n"
               "  locedit edit room.png --model black-forest-labs/FLUX.1-dev --method kv-edit \\\n"
               "      --source 'a red pillow on a sofa' --target 'a green pillow on a sofa' --mask pillow.png "
               "--out green.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("image", nargs="?", help="input image (PNG/JPEG); optional with --from-inversion")
    e.add_argument("--source", help="prompt describing the input image (default with --from-inversion: its prompt)")
    e.add_argument("--target", required=True, help="prompt describing the wanted edit")
    e.add_argument("--from-inversion", metavar="DIR", help="reuse a trajectory saved by 'locedit invert'")
    add_model_args(e, steps=None, model_help=" (with --from-inversion: the model the trajectory was made with)")
    add_image_limit_flags(e)
    e.add_argument("--guidance", type=finite_float, default=None,
                   help="classifier-free guidance scale (default 7.5; a flow editor's own, where it has one)")
    m = e.add_argument_group("method")
    m.add_argument("--method", default="p2p", choices=[*METHODS, *FLOW_EDITORS],
                   help="; ".join(f"{k}: {v.summary}" for k, v in METHODS.items()) + " (default p2p). On a FLUX or "
                        "SD3 model: " + "; ".join(f"{k}: {v.summary} [{', '.join(v.families)}]"
                                                   for k, v in FLOW_EDITORS.items()))
    m.add_argument("--preset", choices=PRESET_NAMES,
                   help="start every option of the method and inversion from the paper's reading or the authors' "
                        "code's (default: locedit's defaults, the paper's where it is explicit; docs/conformance.md)")
    m.add_argument("--inversion", choices=list(INVERSIONS),
                   help="how the image is inverted (default: the method's paper's, null-text for p2p, mag-edit, "
                        "mde-edit, ddim for masactrl, pnp, diffedit; not with methods that invert themselves, such "
                        "as locinv)")
    _edit_inputs_and_outputs(e)
    e.add_argument("--spec", metavar="FILE",
                   help="JSON (or YAML, with PyYAML) object of options, keyed by long option name without "
                        "'--' (e.g. {\"region\": [\"dog=dog.png\"], \"method\": \"mag-edit\"}); "
                        "flags given on the command line win")
    e.set_defaults(run=cmd_edit)
    _register_invert(sub)


def _register_invert(sub) -> None:
    from ..inversion import INVERSIONS
    from ..options import PRESET_NAMES

    from ..flow.inversions import FLOW_INVERSIONS

    flow = "\n".join(f"  {n:13s} {e.summary} [{', '.join(e.families)}]" for n, e in FLOW_INVERSIONS.items())
    v = sub.add_parser(
        "invert", help="invert an image and save the trajectory for later edits",
        description="Invert IMAGE under --source.\n\nOn a UNet model (SD 1.x, 2.x, SDXL): save trajectory.safetensors "
                    "and manifest.json in --out-dir, for 'locedit edit --from-inversion'.\n\nOn a FLUX or SD3 model, "
                    "with a flow inversion: walk the image's latent up to noise, sample it back down by the same "
                    "rule, and save noise.safetensors, reconstruction.png and manifest.json (the reconstruction's "
                    "PSNR against the image, the VAE round trip's, the model calls) in --out-dir. Flow inversions:\n"
                    + flow,
        epilog="examples:\n"
               "  locedit invert cat.png --source 'a cat on the grass' --inversion spd --out-dir cat_inv/ && "
               "locedit edit --from-inversion cat_inv/ --target 'a dog on the grass' --out dog.png\n"
               "  locedit invert cat.png --model black-forest-labs/FLUX.1-dev --source 'a cat on the grass' "
               "--inversion rf-solver --steps 28 --out-dir cat_flux/",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("image", help="input image (PNG/JPEG)")
    v.add_argument("--source", "--prompt", dest="prompt", required=True,
                   help="prompt describing the image (the edit's --source)")
    add_model_args(v)
    add_image_limit_flags(v)
    v.add_argument("--guidance", type=finite_float, default=None,
                   help="UNet: the editing CFG scale the inversion prepares for (null-text; default 7.5); flow: the "
                        "inversion's FLUX distilled guidance or SD3 CFG scale (default: the inversion's, 1; "
                        "rf-inversion 0)")
    v.add_argument("--inversion", default=DEFAULT_INVERSION, choices=[*INVERSIONS, *FLOW_INVERSIONS],
                   help=f"(default {DEFAULT_INVERSION}; on a flow model one of {', '.join(FLOW_INVERSIONS)})")
    v.add_argument("--preset", choices=PRESET_NAMES, help="the inversion's options from its paper or its authors' code")
    g = v.add_argument_group("inversion options")
    add_option_flags(g, option_flag_table({**_inversion_classes(), **_flow_inversion_classes()}))
    v.add_argument("--grad-checkpointing", action="store_true", help=GRAD_CHECKPOINTING_HELP)
    v.add_argument("--out-dir", "--out", dest="out", required=True,
                   help="output folder (manifest.json, trajectory.safetensors); --out is the same")
    add_output_flags(v)
    v.set_defaults(run=cmd_invert)


def _edit_inputs_and_outputs(e) -> None:
    """``locedit edit``'s input flags, the options of every method and inversion, the editing extras
    and the output flags."""
    i = e.add_argument_group("inputs (each method uses some; see `locedit methods`)")
    i.add_argument("--mask", action="append", default=[],
                   help="PNG mask of the region to edit (white = edit), the image's size; the local blend keeps "
                        "everything outside it (repeatable: the union is used)")
    i.add_argument("--mask-rule", choices=["half", "nonzero"], default="half",
                   help="which pixels of a mask PNG are in: half (brighter than half the file's range, default) or "
                        "nonzero (every pixel that is not black, as MAG-Edit's and MDE-Edit's scripts read masks)")
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
    add_option_flags(o, _edit_table())
    _flow_model_flags(e.add_argument_group("flow models (the flow editors only)"))
    x = e.add_argument_group("SPDInv editing-side extras (any UNet method; off by default)")
    x.add_argument("--npi-null", action="store_true", help="use the source prompt as the null embedding")
    x.add_argument("--proximal", type=finite_float, nargs="?", const=0.7, default=None, metavar="Q",
                   help="soft-threshold the guidance difference at its Q-quantile (0.7 when no Q)")
    x.add_argument("--inversion-guidance", type=finite_float, nargs="?", const=NO_VALUE, default=None, metavar="T",
                   help="below timestep T (400 when no T) pull unedited latents onto the inversion; needs --proximal. "
                        "With kv-edit or rf-inversion: their inversion's guidance scale")
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


def _flow_model_flags(group) -> None:
    from ..diffusion.quantize import MODES as QUANTIZE_MODES

    group.add_argument("--quantize", choices=list(QUANTIZE_MODES),
                       help="quantise the transformer's weights (torchao int8 weight-only: FLUX.1-dev in 11 GiB "
                            "instead of 22; needs locedit[quant])")
    group.add_argument("--offload-text", action="store_true",
                       help="keep the text encoders on the CPU between encodings (T5-XXL: 9 GiB off the accelerator)")


def _timestep(value) -> int | None:
    """SPDInv's ``--inversion-guidance T``: 400 when given without T; a whole number."""
    if value is None:
        return None
    if value == NO_VALUE:
        return 400
    if value != int(value) or value < 0:
        raise LoceditError(f"--inversion-guidance {value:g}: a timestep, a whole number >= 0")
    return int(value)


GRAD_CHECKPOINTING_HELP = ("recompute the UNet's activations in each backward pass (null-text, SPDInv, LocInv's token "
                           "learning, MAG-Edit/MDE-Edit guidance) instead of keeping them: less memory, slower; "
                           "refused where nothing takes gradients")


def _inversion_options(args, name: str, context: str):
    from ..inversion import INVERSIONS
    from ..options import preset

    options = preset(INVERSIONS[name].Options, args.preset)
    key = f"inversion {name}"
    table = option_flag_table({**_inversion_classes(), **_flow_inversion_classes()})  # a flow flag is refused too
    return apply_option_flags(args, table, {key: options}, context)[key]


def _flow_inversion_options(args):
    from dataclasses import replace

    from ..flow.inversions import FLOW_INVERSIONS

    if args.preset:
        raise LoceditError(f"--preset: --inversion {args.inversion} has one reading (its authors' code)")
    if args.grad_checkpointing:
        raise LoceditError(f"--grad-checkpointing: --inversion {args.inversion} takes no gradients")
    key = f"inversion {args.inversion}"
    options = apply_option_flags(args, option_flag_table({**_inversion_classes(), **_flow_inversion_classes()}),
                                 {key: FLOW_INVERSIONS[args.inversion].Options()}, f"--inversion {args.inversion}")[key]
    return options if args.guidance is None else replace(options, guidance=args.guidance)


def cmd_flow_invert(args) -> dict:
    """``locedit invert`` with a flow inversion: noise.safetensors, reconstruction.png, manifest.json."""
    import json

    from ..api import flow_invert
    from ..fileio import check_output_dir, load_image
    from ..spec import DEFAULT_MODEL
    from .common import progress, quiet_libraries

    options = _flow_inversion_options(args)
    if options.prompt == "source" and not args.prompt.strip():
        raise LoceditError("--source is empty")
    out = check_output_dir(args.out)
    image = load_image(args.image, **limits(args))
    quiet_libraries(getattr(args, "verbose", False))
    model = args.model or DEFAULT_MODEL
    r = flow_invert(image, args.prompt, model=model, inversion=args.inversion, steps=args.steps, options=options,
                    seed=args.seed, fit=args.fit, device=args.device, dtype=args.dtype, vae=args.vae,
                    progress=progress(args))
    summary = {"psnr": round(r.psnr, 3), "vae_psnr": round(r.vae_psnr, 3), "inversion_calls": r.model_calls[0],
               "reconstruction_calls": r.model_calls[1]}

    def write(tmp: Path) -> None:
        from safetensors.torch import save_file

        from ..fileio import save_png

        save_file({"noise": r.inverted.noise.float().cpu().contiguous()}, str(tmp / "noise.safetensors"))
        save_png(r.reconstruction, tmp / "reconstruction.png", r.meta)
        (tmp / "manifest.json").write_text(json.dumps({**r.meta, **summary, "image": str(args.image)}, indent=2))

    _write_folder(out, write)
    return {"out": str(out), "method": args.inversion, **summary}


def _write_folder(out: Path, write) -> None:
    """``write(tmp)`` fills a folder made next to ``out`` (same filesystem), whose files are then renamed
    into ``out``: no partial output on a failure."""
    from ..fileio import _umask

    tmp = Path(tempfile.mkdtemp(prefix=".locedit-inv-", dir=out.parent))
    try:
        write(tmp)
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


def _flow_inversions_instead(bundle) -> str:
    from ..flow.inversions import FLOW_INVERSIONS

    return "invert it with --inversion " + "|".join(n for n, e in FLOW_INVERSIONS.items() if bundle.family in e.families)


def cmd_invert(args) -> dict:
    from ..flow.inversions import FLOW_INVERSIONS

    if args.inversion in FLOW_INVERSIONS:
        return cmd_flow_invert(args)
    from dataclasses import asdict

    from .. import pipeline
    from ..api import check_vocabulary
    from ..fileio import check_output_dir, load_image
    from ..spec import DEFAULT_MODEL
    from .common import fit_image, load_bundle, progress

    options = _inversion_options(args, args.inversion, f"--inversion {args.inversion}")
    if not args.prompt.strip():
        raise LoceditError("--source is empty")
    out = check_output_dir(args.out)
    image = load_image(args.image, **limits(args))
    check_vocabulary(args.model or DEFAULT_MODEL, {"source": args.prompt})
    bundle = load_bundle(args, f"--inversion {args.inversion}", _flow_inversions_instead)
    fit, fitted = fit_image(bundle, image, args.fit)
    guidance = 7.5 if args.guidance is None else args.guidance
    traj = pipeline.invert(bundle, fitted, args.prompt, args.inversion, args.steps, guidance, options,
                           progress(args), grad_checkpointing=args.grad_checkpointing)
    _write_folder(out, lambda tmp: traj.save(tmp, extra={
        "image": {"height": fit.height, "width": fit.width, "fit": fit.mode, "source": str(args.image)},
        "options": asdict(options), "preset": args.preset}))
    return {"out": str(out), "method": traj.method, "unet_calls": traj.stats["unet_calls"],
            "seconds": round(traj.stats["seconds"], 3)}


def parse_edit(args):
    """The parsed command line as an :class:`locedit.spec.EditSpec`: every check the arguments alone
    allow, then the method's and the inversion's flags applied to their options (a flag the method,
    or the inversion it runs on, does not have is refused)."""
    from .. import api
    from ..fileio import MAX_BYTES, MAX_PIXELS
    from ..inversion import INVERSIONS
    from ..methods import METHODS
    from ..options import preset
    from ..spec import EditSpec

    max_bytes = int(args.max_image_mb * 2**20)
    spec = EditSpec(
        target=args.target, image=args.image, source=args.source, method=args.method, inversion=args.inversion,
        preset=args.preset, from_inversion=args.from_inversion, masks=tuple(args.mask), boxes=tuple(args.box),
        mask_from=args.mask_from, blend_words=tuple(args.blend_words) if args.blend_words else None,
        regions=tuple(args.region), attributes=tuple(args.attribute), binds=tuple(args.bind), model=args.model,
        vae=args.vae, device=args.device, dtype=args.dtype, steps=50 if args.steps is None else args.steps,
        guidance=7.5 if args.guidance is None else args.guidance, seed=args.seed,
        fit=args.fit, npi_null=args.npi_null, proximal=args.proximal, inversion_guidance=_timestep(args.inversion_guidance),
        grad_checkpointing=args.grad_checkpointing,
        attention_words=tuple(args.attention_words or ()) if args.save_attention else None,
        max_pixels=None if args.max_image_pixels == MAX_PIXELS else args.max_image_pixels,
        max_bytes=None if max_bytes == MAX_BYTES else max_bytes, mask_rule=args.mask_rule)
    api.check(spec)
    method = METHODS[args.method]
    for flag, given in (("--quantize", args.quantize), ("--offload-text", args.offload_text)):
        if given:
            raise LoceditError(f"{flag} is not used by --method {args.method} (the flow editors' option)")
    inversion = args.inversion or method.inversion  # none named: the one its paper uses
    table = _edit_table()
    key, inversion_key = f"method {args.method}", f"inversion {inversion}"
    candidates = {key: preset(method.Options, args.preset), inversion_key: preset(INVERSIONS[inversion].Options, args.preset)}
    # the method's options say whether it runs on an inversion (most by their inputs, Blended Latent
    # Diffusion by its noise option): read them first, then refuse inversion flags it would ignore
    first_context = f"--method {args.method}" + (f" with --inversion {inversion}" if "inversion" in method.uses else "")
    uses_inversion = method.takes_inversion(apply_option_flags(args, table, candidates, first_context)[key])
    active, context = {key: candidates[key]}, f"--method {args.method}"
    if uses_inversion and not args.from_inversion:
        active[inversion_key] = candidates[inversion_key]
        context += f" with --inversion {inversion}"
    applied = apply_option_flags(args, table, active, context)
    spec = spec.replace(options=applied[key], inversion_options=applied.get(inversion_key))
    api.resolve_options(spec)  # --inversion with a method that makes its own
    api.edit_options(spec)
    return spec


def cmd_edit(args) -> dict:
    """``locedit edit``: the command line parsed into a spec, run by the library, its files written
    (all or none)."""
    from .. import api
    from ..fileio import OutputSet
    from ..flow import FLOW_EDITORS
    from .common import progress, quiet_libraries

    if args.method in FLOW_EDITORS:  # the registry says which engine runs it
        from .flow import cmd_edit_flow

        return cmd_edit_flow(args, _edit_table())

    def before_load():  # once the inputs are checked: a bad input is refused before these heavy imports
        import torch

        quiet_libraries(getattr(args, "verbose", False))
        torch.manual_seed(args.seed)  # the edge owns global state; the core takes explicit generators

    check_outputs(args)
    spec = parse_edit(args)
    result = api.edit(spec, progress=progress(args), before_load=before_load)
    outputs = OutputSet()
    if args.panel:
        outputs.add(result.panel(), args.panel, result.meta)
    if args.save_attention and result.attention:
        outputs.add(result.attention_grid(), args.save_attention, result.meta)
    outputs.add(result.edited, args.out, result.meta)
    outputs.commit()  # all files or none
    stats = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.stats.items() if k != "guidance_loss"}
    if "guidance_loss" in result.stats:
        stats["guidance_loss_first_last"] = [[round(h[0], 6), round(h[-1], 6)] for h in result.stats["guidance_loss"] if h]
    extra = {"panel": str(args.panel)} if args.panel else {}
    return {"out": str(args.out), **extra, **result.meta, **stats,
            "unet_calls": stats["inversion_unet_calls"] + stats["edit_unet_calls"]}
