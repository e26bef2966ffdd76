"""Command line: ``locedit edit`` and ``locedit invert``.

The edge of the package: files, PIL images, flags, progress bars and exit codes live here.
Errors the user can fix exit with code 2 and one ``error: ...`` line on stderr; no output file is
left behind (outputs are written to a temporary name and renamed at the end).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

EXIT_USAGE = 2


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line, exit 2."""

    def error(self, message):  # noqa: D401 - argparse API
        sys.stderr.write(f"error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _fraction(text: str) -> float:
    v = float(text)
    if not 0.0 <= v <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not in [0, 1]")
    return v


def _reweight(text: str) -> tuple[str, float]:
    word, sep, scale = text.rpartition("=")
    if not sep or not word:
        raise argparse.ArgumentTypeError(f"expected WORD=SCALE, got {text!r}")
    return word, float(scale)


def _add_model_args(p: argparse.ArgumentParser) -> None:
    from .diffusion.loading import BUILTIN_MODELS, DTYPES

    g = p.add_argument_group("model")
    g.add_argument("--model", default="tiny-random",
                   help=f"built-in name ({', '.join(BUILTIN_MODELS)}), a local diffusers folder, or a hub id "
                        "(safetensors only). Default: tiny-random, a random model for trying the pipeline; "
                        "its output is noise")
    g.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda or cuda:N")
    g.add_argument("--dtype", default="fp32", choices=list(DTYPES), help="network precision; step math stays fp32")
    g.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    g.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    g.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    g.add_argument("--fit", default="pad", choices=["pad", "resize"],
                   help="how an image that is not the model's square size is fitted: pad the short side by "
                        "edge replication (default) or stretch; the result is returned at the input size")


def _add_inversion_args(p: argparse.ArgumentParser, default: str) -> None:
    from .inversion import INVERSIONS, SPDOptions

    g = p.add_argument_group("inversion")
    g.add_argument("--inversion", default=default, choices=list(INVERSIONS),
                   help=f"how the image is inverted (default {default})")
    g.add_argument("--nti-steps", type=int, default=10, help="null-text: inner Adam steps per step (default 10)")
    g.add_argument("--nti-lr", type=float, default=1e-2, help="null-text: Adam learning rate at step 0 (default 1e-2)")
    d = SPDOptions()
    g.add_argument("--spd-steps", type=int, default=d.max_steps, help=f"spd: max steps K per step (default {d.max_steps})")
    g.add_argument("--spd-lr", type=float, default=d.lr, help=f"spd: learning rate (default {d.lr})")
    g.add_argument("--spd-threshold", type=float, default=d.threshold, help=f"spd: stop below this residual (default {d.threshold})")
    g.add_argument("--spd-optimizer", default=d.optimizer, choices=["adamw", "sgd"],
                   help="spd: adamw on MSE reproduces the authors' code (default); sgd with --spd-objective l2 is the paper's")
    g.add_argument("--spd-objective", default=d.objective, choices=["mse", "l2"], help="spd: residual measure (default mse)")


def _inversion_options(args):
    from .inversion import INVERSIONS, NullTextOptions, SPDOptions

    if args.inversion == "null-text":
        return NullTextOptions(inner_steps=args.nti_steps, lr=args.nti_lr)
    if args.inversion == "spd":
        return SPDOptions(max_steps=args.spd_steps, threshold=args.spd_threshold, lr=args.spd_lr,
                          optimizer=args.spd_optimizer, objective=args.spd_objective)
    return INVERSIONS[args.inversion][0]()


def build_parser() -> argparse.ArgumentParser:
    from .control import ENGINES, P2P_MODES

    parser = _Parser(prog="locedit", description="Localized text-guided editing of real images with diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    e = sub.add_parser("edit", help="invert an image and edit it with a target prompt",
                       description="Invert IMAGE under --source and edit it towards --target.",
                       epilog="example: locedit edit cat.png --source 'a cat on the grass' --target 'a dog on the grass' "
                              "--inversion null-text --p2p refine --blend-words cat dog --out dog.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("image", nargs="?", help="input image (PNG/JPEG); optional with --from-inversion")
    e.add_argument("--source", help="prompt describing the input image (default with --from-inversion: its prompt)")
    e.add_argument("--target", required=True, help="prompt describing the wanted edit")
    e.add_argument("--from-inversion", metavar="DIR", help="reuse a trajectory saved by 'locedit invert'")
    _add_model_args(e)
    _add_inversion_args(e, "null-text")
    g = e.add_argument_group("engine (Prompt-to-Prompt)")
    g.add_argument("--engine", default="p2p", choices=list(ENGINES), help="editing engine (default p2p)")
    g.add_argument("--p2p", default="refine", choices=list(P2P_MODES),
                   help="replace: word swap (equal token counts); refine: aligned tokens keep the source maps "
                        "(default); reweight: refine plus --reweight scales")
    g.add_argument("--cross-replace", type=_fraction, default=0.8, help="fraction of steps with cross-attention injection (default 0.8)")
    g.add_argument("--self-replace", type=_fraction, default=0.4, help="fraction of steps with self-attention injection (default 0.4)")
    g.add_argument("--reweight", type=_reweight, action="append", default=[], metavar="WORD=SCALE",
                   help="scale a target word's attention (repeatable)")
    g.add_argument("--blend-words", nargs=2, metavar=("SRC", "TGT"),
                   help="local blend: keep everything outside the attention of SRC (source) and TGT (target)")
    g.add_argument("--blend-threshold", type=_fraction, default=0.3, help="local blend threshold (default 0.3)")
    g.add_argument("--mask", action="append", default=[],
                   help="PNG mask of the region to edit (white = edit), the image's size; replaces the attention "
                        "mask of the local blend (repeatable: the union is used)")
    g.add_argument("--box", action="append", default=[], metavar="X0,Y0,X1,Y1",
                   help="a box (input pixels, exclusive ends) used like --mask (repeatable)")
    m = e.add_argument_group("localised methods (MAG-Edit, MDE-Edit)")
    m.add_argument("--method", default="p2p", choices=["p2p", "mag-edit", "mde-edit", "locinv"],
                   help="p2p: the engine alone; mag-edit: latent guidance towards the region words (one or more "
                        "objects); mde-edit: several objects (OAL) and attribute words (CCL); locinv: per-step noun "
                        "tokens learned from the regions of source-prompt nouns, then the engine")
    m.add_argument("--bind", action="append", default=[], metavar="ADJ:NOUN",
                   help="locinv: bind an adjective to a region noun (repeatable); without it, spaCy's parse when "
                        "installed, else the word before each noun")
    m.add_argument("--locinv-inner", type=int, help="locinv: max token-learning steps per step (default 31)")
    m.add_argument("--region", action="append", default=[], metavar="WORD=MASK",
                   help="tie a target-prompt word to its region: WORD=mask.png or WORD=x0,y0,x1,y1 (repeatable)")
    m.add_argument("--attribute", action="append", default=[], metavar="WORD=MASK",
                   help="mde-edit: an attribute word (colour, texture) and its region (repeatable)")
    m.add_argument("--mag-loss", choices=["token-ratio", "spatial-ratio"], default="token-ratio",
                   help="mag-edit constraint: token ratio (Eq. 1, default) or spatial ratio (Eq. 2)")
    m.add_argument("--negative", action="append", default=[], metavar="WORD",
                   help="mag-edit: a target-prompt word whose share inside the mask is pushed down (Eq. 3)")
    m.add_argument("--guided-steps", type=int, help="steps with latent guidance (mag-edit 25, mde-edit 20)")
    m.add_argument("--iterations", type=int, help="guidance iterations per step (default 15)")
    m.add_argument("--step-size", type=float, help="guidance step size delta (default: mag-edit 2.5, mde-edit 0.1)")
    m.add_argument("--no-sigma-scaling", action="store_true", help="do not scale the step by sqrt((1-a)/a)")
    m.add_argument("--blend-last", type=int, help="last steps that take the source outside the masks (default 15)")
    m.add_argument("--lambda-oal", type=float, help="mde-edit OAL weight (default 1)")
    m.add_argument("--lambda-ccl", type=float, help="mde-edit CCL weight (default 1.25)")
    m.add_argument("--save-attention", metavar="PNG",
                   help="write the edited words' cross-attention maps (map level, averaged over steps) as a grid")
    e.add_argument("--spec", metavar="FILE",
                   help="JSON (or YAML, with PyYAML) object of options, keyed by long option name without "
                        "'--' (e.g. {\"region\": [\"dog=dog.png\"], \"method\": \"mag-edit\"}); "
                        "flags given on the command line win")
    x = e.add_argument_group("SPDInv editing-side extras (off by default)")
    x.add_argument("--npi-null", action="store_true", help="use the source prompt as the null embedding")
    x.add_argument("--proximal", type=float, nargs="?", const=0.7, default=None, metavar="Q",
                   help="soft-threshold the guidance difference at its Q-quantile (0.7 when no Q)")
    x.add_argument("--inversion-guidance", type=int, nargs="?", const=400, default=None, metavar="T",
                   help="below timestep T (400 when no T) pull unedited latents onto the inversion; needs --proximal")
    o = e.add_argument_group("output")
    o.add_argument("--out", default="edit.png", help="output PNG (default edit.png)")
    o.add_argument("--panel", metavar="PNG", help="also write a side-by-side PNG: source | edit | mask "
                   "(the user mask, or the local-blend mask, or the edit's change when there is neither)")
    o.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    o.add_argument("--quiet", action="store_true", help="no progress bars")

    v = sub.add_parser("invert", help="invert an image and save the trajectory for later edits",
                       description="Invert IMAGE under --prompt; save trajectory.safetensors and manifest.json in --out.",
                       epilog="example: locedit invert cat.png --prompt 'a cat on the grass' --inversion spd --out cat_inv/ && "
                              "locedit edit --from-inversion cat_inv/ --target 'a dog on the grass' --out dog.png",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    v.add_argument("image", help="input image (PNG/JPEG)")
    v.add_argument("--prompt", required=True, help="prompt describing the image")
    _add_model_args(v)
    _add_inversion_args(v, "null-text")
    v.add_argument("--out", required=True, help="output folder")
    v.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    v.add_argument("--quiet", action="store_true", help="no progress bars")

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
    n.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    n.add_argument("--quiet", action="store_true", help="no progress bars")

    bn = sub.add_parser("bench", help="run methods over a dataset, one JSONL row per (item, method), resumable",
                        description="Run every method on every item of a dataset and record metrics and timings. "
                                    "A killed run resumes where it stopped. Under 'accelerate launch' each process "
                                    "takes its share of the items.",
                        epilog="example: locedit bench --dataset shapes:n=30,seed=0 --methods p2p,p2p-mask,mag-edit "
                               "--model shapes --out runs/shapes-bench --limit 10 && locedit report runs/shapes-bench",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    bn.add_argument("--dataset", required=True, metavar="KIND:PATH",
                    help="pie:FOLDER (PIE-Bench), jsonl:FILE (generic edit spec), shapes:n=N,seed=S,size=Z,kinds=a+b")
    bn.add_argument("--methods", required=True, help="comma-separated: p2p, p2p-mask, mag-edit, mde-edit, locinv, ip2p, lime")
    bn.add_argument("--out", required=True, help="output folder (results*.jsonl, images/)")
    bn.add_argument("--limit", type=int, help="only the first N items")
    bn.add_argument("--metrics", default="pixel,shapes",
                    help="pixel (PSNR/MSE/SSIM on the unedited part, PIE-Bench convention) and shapes (ground truth, "
                         "oracle) are always computed; add lpips-alex, lpips-squeeze, clip, dino (pretrained weights "
                         "from $LOCEDIT_WEIGHTS or the Hugging Face cache)")
    bn.add_argument("--model", default="shapes", help="text-to-image model for the P2P-family methods")
    bn.add_argument("--instruct-model", default="shapes-instruct", help="InstructPix2Pix model for ip2p and lime")
    bn.add_argument("--inversion", default="null-text", help="inversion for the P2P-family methods")
    bn.add_argument("--steps", type=int, default=50)
    bn.add_argument("--guidance", type=float, default=7.5)
    bn.add_argument("--seed", type=int, default=0)
    bn.add_argument("--device", default="auto", help="auto: cuda:LOCAL_RANK when available, else cpu")
    bn.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    bn.add_argument("--json", action="store_true")
    bn.add_argument("--quiet", action="store_true")

    rp = sub.add_parser("report", help="average a bench folder per method and edit type; table, plots, gallery")
    rp.add_argument("folder", help="a folder written by 'locedit bench'")
    rp.add_argument("--json", action="store_true")
    rp.add_argument("--quiet", action="store_true")

    w = sub.add_parser("world", help="write shapes-world scenes or edit sets (exact ground truth) to disk",
                       description="The synthetic shapes world: seeded scenes of 1-3 objects with exact masks, "
                                   "and edits with their exact target renders.",
                       epilog="example: locedit world edits --n 30 --kinds colour,shape --out shapes-edits/",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("what", choices=["sample", "edits"], help="sample: scenes with captions and masks; "
                   "edits: source/target pairs with captions, instructions, masks and boxes")
    w.add_argument("--n", type=int, default=16, help="how many (default 16)")
    w.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    w.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    w.add_argument("--kinds", default="colour,shape,texture,background,two",
                   help="edit kinds, comma-separated (edits only)")
    w.add_argument("--out", required=True, help="output folder")
    w.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    w.add_argument("--quiet", action="store_true", help="no progress bars")
    return parser


# ---- file edges -------------------------------------------------------------------------------------
def load_image(path: str):
    """PNG/JPEG -> (1, 3, H, W) float in [0, 1]."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from .errors import LoceditError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise LoceditError(f"image {path!r} does not exist") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise LoceditError(f"image {path!r} cannot be read: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    return torch.from_numpy(arr).permute(2, 0, 1)[None].contiguous()


def load_mask(path: str):
    """PNG -> (1, 1, H, W) binary float (pixels > 127 of the grayscale image are in)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    from .errors import MaskError

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"), dtype=np.uint8)
    except FileNotFoundError:
        raise MaskError(f"mask {path!r} does not exist") from None
    except (UnidentifiedImageError, OSError):
        raise MaskError(f"mask {path!r} cannot be read as an image") from None
    return torch.from_numpy((arr > 127).astype(np.float32))[None, None]


def save_png(image, path: str, metadata: dict) -> None:
    """(1, 3, H, W) in [0, 1] -> PNG with ``metadata`` as text chunks; atomic (temp file + rename)."""
    import numpy as np
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    arr = (image[0].permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).round().astype(np.uint8)
    info = PngInfo()
    for k, v in metadata.items():
        info.add_text(f"locedit:{k}", v if isinstance(v, str) else json.dumps(v))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".locedit-", suffix=".png", dir=out.parent)
    os.close(fd)
    try:
        Image.fromarray(arr).save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def box_mask(spec: str, height: int, width: int):
    """'x0,y0,x1,y1' in input pixels (exclusive ends) -> (1, 1, H, W) mask."""
    import torch

    from .errors import MaskError

    try:
        x0, y0, x1, y1 = (int(float(v)) for v in spec.split(","))
    except ValueError:
        raise MaskError(f"box {spec!r} is not X0,Y0,X1,Y1") from None
    if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
        raise MaskError(f"box {spec!r} is empty or outside the {width}x{height} image")
    m = torch.zeros(1, 1, height, width)
    m[..., y0:y1, x0:x1] = 1
    return m


def _check_user_mask(m, name, height, width):
    from .errors import MaskError

    if tuple(m.shape[-2:]) != (height, width):
        raise MaskError(f"mask {name!r} is {m.shape[-1]}x{m.shape[-2]} but the image is {width}x{height}")
    if not bool(m.any()):
        raise MaskError(f"mask {name!r} is empty (no white pixel)")


def _region(spec: str, height: int, width: int):
    """'WORD=mask.png' or 'WORD=x0,y0,x1,y1' -> (word, (1, 1, H, W) mask)."""
    from .errors import MaskError

    word, sep, where = spec.partition("=")
    if not sep or not word.strip() or not where:
        raise MaskError(f"region {spec!r} is not WORD=MASK.png or WORD=x0,y0,x1,y1")
    looks_like_box = where.count(",") == 3 and all(p.strip().lstrip("-").replace(".", "").isdigit() for p in where.split(","))
    m = box_mask(where, height, width) if looks_like_box else load_mask(where)
    _check_user_mask(m, where, height, width)
    return word.strip(), m


def _method_options(args):
    from .guidance import MAGEditOptions, MDEEditOptions
    from .guidance.locinv import LocInvOptions

    if args.method == "locinv":
        nti = _inversion_options(argparse.Namespace(**{**vars(args), "inversion": "null-text"}))
        return LocInvOptions(nti=nti, **({"max_inner": args.locinv_inner} if args.locinv_inner is not None else {}))

    common = {k: v for k, v in (("guided_steps", args.guided_steps), ("iterations", args.iterations),
                                 ("step_size", args.step_size), ("blend_last", args.blend_last)) if v is not None}
    if args.no_sigma_scaling:
        common["sigma_scaling"] = False
    if args.method == "mde-edit":
        extra = {k: v for k, v in (("lambda_oal", args.lambda_oal), ("lambda_ccl", args.lambda_ccl)) if v is not None}
        return MDEEditOptions(**common, **extra)
    return MAGEditOptions(loss=args.mag_loss, negative_words=tuple(args.negative), **common)


def _pairs(specs: list[str]) -> list[tuple[str, str]]:
    from .errors import PromptError

    out = []
    for spec in specs:
        adj, sep, noun = spec.partition(":")
        if not sep or not adj or not noun:
            raise PromptError(f"--bind {spec!r} is not ADJ:NOUN")
        out.append((adj.strip(), noun.strip()))
    return out


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


def _progress(args):
    from .progress import tqdm_progress

    return None if args.quiet else tqdm_progress


def _load(args):
    import torch

    from .diffusion import load_model

    if args.steps < 1:
        from .errors import LoceditError

        raise LoceditError(f"--steps must be >= 1, got {args.steps}")
    torch.manual_seed(args.seed)  # the edge owns global state; the core takes explicit generators
    _quiet_libraries()
    return load_model(args.model, args.device, args.dtype)


def _quiet_libraries() -> None:
    """Silence diffusers'/transformers' own load bars and warnings: our stderr is ours."""
    import diffusers
    import transformers

    for lib in (diffusers, transformers):
        lib.utils.logging.set_verbosity_error()
        lib.utils.logging.disable_progress_bar()


def _fit_image(bundle, image, mode):
    from .imaging import Fit

    fit = Fit.plan(image.shape[-2], image.shape[-1], bundle.image_size, mode)
    return fit, fit.to_model(image)


# ---- commands ---------------------------------------------------------------------------------------
def cmd_invert(args) -> dict:
    from . import pipeline

    image = load_image(args.image)
    bundle = _load(args)
    fit, fitted = _fit_image(bundle, image, args.fit)
    traj = pipeline.invert(bundle, fitted, args.prompt, args.inversion, args.steps, args.guidance,
                           _inversion_options(args), _progress(args))
    out = Path(args.out)
    tmp = Path(tempfile.mkdtemp(prefix=".locedit-inv-", dir=out.parent if out.parent.exists() else None))
    try:
        traj.save(tmp, extra={"image": {"height": fit.height, "width": fit.width, "fit": fit.mode, "source": str(args.image)},
                              "options": asdict(_inversion_options(args))})
        out.mkdir(parents=True, exist_ok=True)
        for f in tmp.iterdir():
            os.replace(f, out / f.name)
    finally:
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
    return {"out": str(out), "method": traj.method, "unet_calls": traj.stats["unet_calls"],
            "seconds": round(traj.stats["seconds"], 3)}


def cmd_edit(args) -> dict:
    import torch

    from . import pipeline
    from .control import P2POptions
    from .errors import LoceditError, MaskError
    from .imaging import Fit
    from .inversion import Trajectory

    trajectory, manifest = None, None
    if args.from_inversion:
        try:
            trajectory, manifest = Trajectory.load(args.from_inversion)
        except (OSError, ValueError, KeyError) as exc:
            raise LoceditError(f"--from-inversion {args.from_inversion!r} is not a saved trajectory ({exc})") from None
        source = args.source or trajectory.prompt
        size = manifest.get("image", {})
        image = None
        if args.image:
            image = load_image(args.image)
    else:
        if not args.image:
            raise LoceditError("edit needs IMAGE (or --from-inversion DIR)")
        if not args.source:
            raise LoceditError("edit needs --source (the prompt that describes the input image)")
        source = args.source
        image = load_image(args.image)
    if image is not None:
        height, width = image.shape[-2:]
    else:
        height, width = size.get("height"), size.get("width")
    masks = [load_mask(p) for p in args.mask] + [box_mask(b, height, width) for b in args.box]
    for path, m in zip(list(args.mask) + list(args.box), masks):
        _check_user_mask(m, path, height, width)
    mask = torch.stack(masks).amax(dim=0) if masks else None
    regions = [_region(spec, height, width) for spec in args.region]
    attributes = [_region(spec, height, width) for spec in args.attribute]
    engine_options = P2POptions(
        mode=args.p2p, cross_replace=args.cross_replace, self_replace=args.self_replace,
        reweight=tuple(args.reweight), blend_words=tuple(args.blend_words) if args.blend_words else None,
        blend_threshold=args.blend_threshold,
    )
    options = pipeline.EditOptions(guidance=args.guidance, npi_null=args.npi_null, proximal_quantile=args.proximal,
                                   inversion_guidance_t=args.inversion_guidance)
    bundle = _load(args)
    if trajectory is not None and trajectory.model and trajectory.model != bundle.name:
        raise LoceditError(f"the trajectory was made with model {trajectory.model!r}, not {bundle.name!r} (pass --model)")
    fit = Fit.plan(height, width, bundle.image_size, manifest["image"].get("fit", args.fit) if manifest else args.fit)
    fitted = fit.to_model(image) if image is not None else None
    fitted_mask = fit.to_model(mask, binary=True) if mask is not None else None
    from .guidance import Region

    fitted_regions = [Region(w, fit.to_model(m, binary=True)) for w, m in regions]
    fitted_attrs = [Region(w, fit.to_model(m, binary=True)) for w, m in attributes]
    words = [w for w, _ in regions + attributes]
    if not words and args.blend_words:
        words = [args.blend_words[1]]
    if not words:
        src_words = {w.lower() for w in source.split()}
        words = [w for w in args.target.split() if w.lower() not in src_words][:4]
    result = pipeline.edit(
        bundle, fitted, source, args.target, inversion=args.inversion, inversion_options=_inversion_options(args),
        trajectory=trajectory, method=args.method, engine=args.engine, engine_options=engine_options,
        mask=fitted_mask, regions=fitted_regions, attributes=fitted_attrs, pairs=_pairs(args.bind),
        method_options=_method_options(args),
        record_words=tuple(words) if args.save_attention else (),
        num_steps=args.steps, options=options, progress=_progress(args),
    )
    edited = fit.from_model(result.edited)
    meta = {
        "source": source, "target": args.target, "model": bundle.name,
        "inversion": result.trajectory.method, "engine": args.engine,
        "method": args.method, "engine_options": asdict(engine_options), "edit_options": asdict(options),
        "method_options": asdict(_method_options(args)) if args.method != "p2p" else None,
        "regions": list(args.region) + list(args.attribute),
        "steps": result.trajectory.num_steps, "seed": args.seed,
    }
    if args.panel:
        panel_mask = mask if mask is not None else None
        if panel_mask is None and result.sample.blend_mask is not None:
            panel_mask = fit.from_model(torch.nn.functional.interpolate(result.sample.blend_mask.float().cpu(),
                                                                        size=(bundle.image_size,) * 2))
        if panel_mask is None:  # the change itself, normalised
            src = image if image is not None else fit.from_model(result.source.cpu())
            diff = (edited - src).abs().amax(dim=1, keepdim=True)
            panel_mask = diff / diff.max().clamp_min(1e-6)
        source_view = image if image is not None else fit.from_model(result.source.cpu())
        save_png(torch.cat([source_view, edited, panel_mask.expand(-1, 3, -1, -1)], dim=3), args.panel, meta)
    if args.save_attention and "attention" in result.stats:
        save_png(attention_grid(result.stats.pop("attention"), bundle.image_size), args.save_attention, meta)
    result.stats.pop("attention", None)
    save_png(edited, args.out, meta)
    stats = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in result.stats.items() if k != "guidance_loss"}
    if "guidance_loss" in result.stats:
        hist = result.stats["guidance_loss"]
        stats["guidance_loss_first_last"] = [[round(h[0], 6), round(h[-1], 6)] for h in hist if h]
    extra = {"panel": str(args.panel)} if args.panel else {}
    return {"out": str(args.out), **extra, **meta, **stats, "unet_calls": stats["inversion_unet_calls"] + stats["edit_unet_calls"]}


def cmd_world(args) -> dict:
    from .errors import LoceditError
    from .world.edits import EDIT_KINDS
    from .world.export import write_edits, write_scenes

    if args.n < 1 or args.size < 8:
        raise LoceditError("--n must be >= 1 and --size >= 8")
    if args.what == "sample":
        out = write_scenes(args.out, args.n, args.seed, args.size, _progress(args))
        return {"out": str(out), "scenes": args.n, "index": str(out / "scenes.jsonl")}
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    bad = [k for k in kinds if k not in EDIT_KINDS]
    if bad or not kinds:
        raise LoceditError(f"unknown edit kind {bad[0] if bad else args.kinds!r}; choose from {', '.join(EDIT_KINDS)}")
    out = write_edits(args.out, args.n, args.seed, args.size, kinds, _progress(args))
    return {"out": str(out), "edits": args.n, "index": str(out / "edits.jsonl")}


def cmd_instruct(args) -> dict:
    import torch
    import torch.nn.functional as F

    from .errors import LoceditError
    from .imaging import Fit
    from .instruct import IP2POptions, LIMEOptions, instruct_edit, lime_edit

    image = load_image(args.image)
    height, width = image.shape[-2:]
    mask = None
    if args.mask:
        if args.method != "lime":
            raise LoceditError("--mask is for --method lime")
        mask = load_mask(args.mask)
        _check_user_mask(mask, args.mask, height, width)
    if args.clusters < 1 or args.points < 1:
        raise LoceditError("--clusters and --points must be >= 1")
    bundle = _load(args)
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
                          progress=_progress(args))
        options = {"ip2p": opts.__dict__}
    else:
        lopts = LIMEOptions(clusters=args.clusters, points=args.points, seed=args.seed,
                            localize_guidance=IP2POptions(args.image_guidance, 7.5),
                            edit_guidance=IP2POptions(args.image_guidance, 3.5 if args.text_guidance is None else args.text_guidance))
        res = lime_edit(bundle, fitted, args.instruction, args.steps, lopts, args.seed,
                        fit.to_model(mask, binary=True) if mask is not None else None, _progress(args))
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


def cmd_bench(args) -> dict:
    import os

    from .bench import BENCH_METHODS, BenchConfig, open_dataset, run_bench
    from .bench.runner import INSTRUCT
    from .diffusion import load_model
    from .errors import LoceditError

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in BENCH_METHODS]
    if bad or not methods:
        raise LoceditError(f"unknown method {bad[0] if bad else args.methods!r}; choose from {', '.join(BENCH_METHODS)}")
    if args.limit is not None and args.limit < 1:
        raise LoceditError("--limit must be >= 1")
    items = open_dataset(args.dataset)
    device = args.device
    if device == "auto":
        import torch

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    _quiet_libraries()
    t2i = load_model(args.model, device, args.dtype) if any(m not in INSTRUCT for m in methods) else None
    ip2p = load_model(args.instruct_model, device, args.dtype) if any(m in INSTRUCT for m in methods) else None
    from .bench.runner import LearnedMetrics

    learned_names = [m.strip() for m in args.metrics.split(",") if m.strip() and m.strip() not in ("pixel", "shapes")]
    learned = LearnedMetrics.load(learned_names) if learned_names else None
    config = BenchConfig(steps=args.steps, guidance=args.guidance, inversion=args.inversion, seed=args.seed,
                         learned=learned)
    out = run_bench(items, methods, args.out, t2i, ip2p, config, args.limit, _progress(args))
    from .bench import load_rows

    return {"out": str(out), "rows": len(load_rows(out))}


def cmd_report(args) -> dict:
    from .bench.report import write_report

    written = write_report(args.folder)
    return {"out": str(written["markdown"]), **{k: str(v) for k, v in written.items()}}


COMMANDS = {"edit": cmd_edit, "invert": cmd_invert, "instruct": cmd_instruct, "world": cmd_world,
            "bench": cmd_bench, "report": cmd_report}


def _expand_spec(argv: list[str]) -> list[str]:
    """Insert the options of an ``--spec FILE`` (JSON, or YAML with PyYAML) that the command line
    does not give itself."""
    from .errors import LoceditError

    if "--spec" not in argv:
        return argv
    i = argv.index("--spec")
    if i + 1 >= len(argv):
        raise LoceditError("--spec needs a file")
    path = argv[i + 1]
    try:
        text = Path(path).read_text()
    except OSError:
        raise LoceditError(f"spec file {path!r} cannot be read") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
    except ImportError:
        raise LoceditError("YAML spec files need PyYAML (pip install pyyaml); or use JSON") from None
    except Exception as exc:
        raise LoceditError(f"spec file {path!r} is not valid: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise LoceditError(f"spec file {path!r} must hold an object of options")
    extra: list[str] = []
    positional = []
    for key, value in spec.items():
        if key == "image":
            if not any(not a.startswith("-") for a in argv[1:i]):
                positional.append(str(value))
            continue
        flag = "--" + key.replace("_", "-")
        if flag in argv:
            continue
        values = value if isinstance(value, list) else [value]
        if value is True:
            extra.append(flag)
        elif value is False or value is None:
            continue
        elif key in ("blend_words", "blend-words"):
            extra += [flag] + [str(v) for v in values]
        else:
            for v in values:
                extra += [flag, str(v)]
    rest = argv[1:i] + argv[i + 2 :]
    return [argv[0]] + positional + rest + extra


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    from .errors import LoceditError as _UserError

    try:
        argv = _expand_spec(list(sys.argv[1:] if argv is None else argv))
    except _UserError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 2, one line) and --help (exit 0)
        return int(exc.code or 0)
    from .errors import LoceditError

    t0 = time.perf_counter()
    try:
        summary = COMMANDS[args.command](args)
    except LoceditError as exc:
        sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    summary["total_seconds"] = round(time.perf_counter() - t0, 3)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        sys.stderr.write(f"wrote {summary['out']}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
