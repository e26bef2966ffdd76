"""``locedit flow`` (alias ``locedit flowedit``): the flow editors (:data:`locedit.flow.FLOW_EDITORS`)
on a FLUX or Stable Diffusion 3 model (issue 33; their entry until they join ``locedit edit``).
Each editor's flags come from its options dataclass; a flag the chosen editor does not have is
refused in one line, before any model is loaded."""

from __future__ import annotations

import argparse

from .common import (add_image_limit_flags, add_option_flags, add_output_flags, apply_option_flags, option_flag_table,
                     seed)


def _editors():
    from ..flow import FLOW_EDITORS

    return FLOW_EDITORS


def _table():
    return option_flag_table({name: e.Options for name, e in _editors().items()})


def register(sub) -> None:
    editors = _editors()
    lines = "\n".join(f"  {name:15s} {e.summary} [{', '.join(e.families)}]" for name, e in editors.items())
    f = sub.add_parser(
        "flow", aliases=["flowedit"], help="edit with a flow editor (FlowEdit, RF-Solver-Edit, FireFlow, KV-Edit) "
                                           "on a FLUX or SD3 model",
        description="Edit an image with one of the flow-matching transformers' editors, on a FLUX.1 or Stable "
                    "Diffusion 3 diffusers model. Unset settings take the editor's defaults (the paper's, or its "
                    "authors' code's: docs/conformance.md). --mask keeps everything outside it on the source "
                    "(locedit's addition for FlowEdit, RF-Solver-Edit and FireFlow; KV-Edit needs one); --blend-words "
                    "makes that mask from the words' attention maps.\n\n"
                    "editors:\n" + lines,
        epilog="examples:\n"
               "  locedit flow cat.png --model black-forest-labs/FLUX.1-dev --source 'a cat on the grass' "
               "--target 'a dog on the grass' --mask cat-mask.png --out dog.png\n"
               "  locedit flow cat.png --method kv-edit --model black-forest-labs/FLUX.1-dev --source 'a cat' "
               "--target 'a dog' --mask cat-mask.png --skip 4 --out dog.png",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    f.add_argument("image", help="the image to edit (any size: fitted to the model's square and back)")
    f.add_argument("--method", default="flowedit", choices=list(editors), help="the editor (default flowedit)")
    f.add_argument("--source", required=True, help="the prompt that describes the image")
    f.add_argument("--target", required=True, help="the prompt of the edit")
    f.add_argument("--model", required=True, help="a FLUX.1 or Stable Diffusion 3 diffusers folder or hub id")
    f.add_argument("--mask", help="PNG mask (white = may change), the image's size: the outside stays the source's")
    f.add_argument("--blend-words", nargs=2, metavar=("SRC", "TGT"),
                   help="a mask from the words' joint-attention maps instead of --mask: the source word in "
                        "--source and the target word in --target, P2P's local-blend rule (docs/flow.md)")
    f.add_argument("--out", required=True, help="the edited image (.png with metadata, .jpg, .webp)")
    f.add_argument("--seed", type=seed, default=0, help="the noise draws' seed (default 0)")
    f.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    f.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="network precision")
    f.add_argument("--fit", default="pad", choices=["pad", "resize"], help="how a non-square image is fitted")
    f.add_argument("--quantize", choices=["int8"], help="quantise the transformer's weights (torchao int8 weight-only: "
                                                         "FLUX.1-dev in 11 GiB instead of 22; needs locedit[quant])")
    f.add_argument("--offload-text", action="store_true",
                   help="keep the text encoders on the CPU between encodings (T5-XXL: 9 GiB off the accelerator)")
    add_option_flags(f.add_argument_group("editor settings"), _table())
    add_image_limit_flags(f)
    add_output_flags(f)
    f.set_defaults(run=cmd_flow)


def cmd_flow(args) -> dict:
    from ..errors import LoceditError
    from ..fileio import check_output, header_size
    from .common import limits

    entry = _editors()[args.method]
    if not args.source.strip() or not args.target.strip():
        raise LoceditError("--source and --target must not be empty")
    options = apply_option_flags(args, _table(), {entry.name: entry.Options()}, f"--method {entry.name}")[entry.name]
    if args.mask and args.blend_words:
        raise LoceditError("give --mask or --blend-words, not both")
    if entry.needs_mask and not (args.mask or args.blend_words):
        raise LoceditError(f"--method {entry.name} needs --mask or --blend-words (the region to regenerate)")
    for prompt, word, flag in ((args.source, (args.blend_words or ["", ""])[0], "--source"),
                               (args.target, (args.blend_words or ["", ""])[1], "--target")):
        if args.blend_words and not _has_words(prompt, word):
            raise LoceditError(f"--blend-words: {word!r} is not a word of {flag} {prompt!r}")
    check_output(args.out)
    height, width = header_size(args.image, "image", **limits(args))
    if args.mask:
        h, w = header_size(args.mask, "mask", **limits(args))
        if (h, w) != (height, width):
            raise LoceditError(f"mask {args.mask!r} is {w}x{h} but the image is {width}x{height}")
    return _run(args, entry, options)


def _has_words(prompt: str, word: str) -> bool:
    """``word`` (one or more words) occurs in ``prompt``, case and punctuation aside (the tokenizer's
    positions are found after the load)."""
    import re

    def split(text):
        return re.findall(r"[\w'-]+", text.lower())

    words, parts = split(prompt), split(word)
    return bool(parts) and any(words[i:i + len(parts)] == parts for i in range(len(words) - len(parts) + 1))


def _run(args, entry, options) -> dict:
    import dataclasses

    import torch

    from ..diffusion import load_model
    from ..diffusion.flow_model import FlowBundle
    from ..errors import LoceditError
    from ..fileio import OutputSet, check_user_mask, load_image, load_mask
    from ..imaging import Fit
    from .common import limits, progress, quiet_libraries

    image = load_image(args.image, **limits(args))
    mask = load_mask(args.mask, **limits(args)) if args.mask else None
    if mask is not None:
        check_user_mask(mask, args.mask, *image.shape[-2:])
    quiet_libraries(args.verbose)
    bundle = load_model(args.model, args.device, args.dtype, offload_text=args.offload_text, quantize=args.quantize)
    if not isinstance(bundle, FlowBundle):
        raise LoceditError(f"{entry.name} runs on FLUX and SD3 models; {args.model!r} is a {bundle.family} UNet model "
                           "(its editors are 'locedit edit --method ...')")
    if bundle.family not in entry.families:
        raise LoceditError(f"{entry.name} runs on {', '.join(entry.families)} models; {args.model!r} is "
                           f"a {bundle.family} model")
    resolved = entry.resolve(options, bundle.family)
    fit = Fit.plan(image.shape[-2], image.shape[-1], bundle.image_size, args.fit)
    z = bundle.encode_image(fit.to_model(image))
    latent_mask = None
    if mask is not None:
        latent_mask = entry.latent_mask(fit.to_model(mask, binary=True), *z.shape[-2:])
    elif args.blend_words:
        from ..flow.maps import blend_words_mask

        latent_mask = blend_words_mask(bundle, z, [(args.source, args.blend_words[0]),
                                                   (args.target, args.blend_words[1])], seed=args.seed)
    with torch.no_grad():
        edited = fit.from_model(bundle.decode_latents(entry.run(bundle, z, args.source, args.target, resolved,
                                                                args.seed, progress(args), latent_mask)).cpu())
    meta = {"method": entry.name, "model": args.model, "source": args.source, "target": args.target,
            "options": dataclasses.asdict(resolved), "seed": args.seed, "fit": fit.mode}
    if args.mask:
        meta["mask"] = args.mask
    if args.blend_words:
        meta["blend_words"] = list(args.blend_words)
    if args.quantize:
        meta["quantize"] = args.quantize
    out = OutputSet()
    out.add(edited, args.out, meta)
    out.commit()
    return {"out": args.out, "model_calls": bundle.unet_calls}
