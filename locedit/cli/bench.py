"""``locedit bench`` and ``locedit report``."""

from __future__ import annotations

import argparse

from ..spec import DEFAULT_INVERSION
from .common import _positive_int, add_output_flags, finite_float, seed


def _inversions():
    from ..inversion import INVERSIONS

    return [*INVERSIONS, "default"]


def _bench_methods():
    from ..bench import bench_methods

    return list(bench_methods())


def register(sub) -> None:
    bn = sub.add_parser("bench", help="run methods over a dataset, one JSONL row per (item, method), resumable",
                        description="Run every method on every item of a dataset and record metrics and timings. "
                                    "A killed run resumes where it stopped. Under 'accelerate launch' each process "
                                    "takes its share of the items.",
                        epilog="example: locedit bench --dataset shapes:n=30,seed=0 --methods p2p,p2p-mask,mag-edit "
                               "--model shapes --out runs/shapes-bench --limit 10 && locedit report runs/shapes-bench",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    bn.add_argument("--dataset", required=True, metavar="KIND:PATH",
                    help="pie:FOLDER (PIE-Bench), jsonl:FILE (generic edit spec), shapes:n=N,seed=S,size=Z,kinds=a+b")
    bn.add_argument("--methods", required=True,
                    help="comma-separated: " + ", ".join(_bench_methods()) + " (NAME-mask: the item's mask replaces "
                         "the attention blend)")
    bn.add_argument("--out-dir", "--out", dest="out", required=True,
                    help="output folder (results*.jsonl, run.json, images/); --out is the same")
    bn.add_argument("--limit", type=int, help="only the first N items")
    bn.add_argument("--any-path", action="store_true",
                    help="let the dataset name files outside its folder (refused by default: a dataset from "
                         "elsewhere cannot make the bench read other files)")
    bn.add_argument("--no-retry", action="store_true",
                    help="on resume, keep the rows that failed instead of running them again")
    bn.add_argument("--metrics", default="pixel,shapes",
                    help="pixel (PSNR/MSE/SSIM on the unedited part, PIE-Bench convention) and shapes (ground truth, "
                         "oracle) are always computed; add lpips-alex, lpips-squeeze, clip, dino (pretrained weights "
                         "from $LOCEDIT_WEIGHTS or the Hugging Face cache)")
    bn.add_argument("--model", default="shapes", help="text-to-image model for the P2P-family methods")
    bn.add_argument("--instruct-model", default="shapes-instruct", help="InstructPix2Pix model for ip2p and lime")
    bn.add_argument("--inversion", default=DEFAULT_INVERSION, choices=_inversions(),
                    help="inversion for the methods that take one (default null-text; 'default': each method's "
                         "own, its paper's: ddim for masactrl, pnp, diffedit, null-text for the others)")
    bn.add_argument("--preset", choices=["paper", "official"],
                    help="every method's and inversion's options from the paper's or the authors' code's reading")
    bn.add_argument("--steps", type=_positive_int, default=50, help="sampling steps (default 50)")
    bn.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    bn.add_argument("--seed", type=seed, default=0, help="random seed (default 0)")
    bn.add_argument("--device", default="auto", help="auto: cuda:LOCAL_RANK when available, else cpu")
    bn.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="network precision (default fp32)")
    add_output_flags(bn)

    rp = sub.add_parser("report", help="average a bench folder per method and edit type; table, plots, gallery")
    rp.add_argument("folder", help="a folder written by 'locedit bench'")
    rp.add_argument("--against", metavar="PAPER:TABLE",
                    help="put the run beside a published table shipped with locedit (e.g. spdinv:table1; "
                         "docs/reported/README.md lists them)")
    add_output_flags(rp)

    bn.set_defaults(run=cmd_bench)
    rp.set_defaults(run=cmd_report)


def cmd_bench(args) -> dict:
    import os

    from .common import progress, quiet_libraries
    from ..bench import BenchConfig, bench_methods, open_dataset, run_bench
    from ..bench.runner import INSTRUCT
    from ..diffusion import load_model
    from ..errors import LoceditError
    from ..fileio import check_output_dir

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    known = bench_methods()
    bad = [m for m in methods if m not in known]
    if bad or not methods:
        raise LoceditError(f"unknown method {bad[0] if bad else args.methods!r}; choose from {', '.join(known)}")
    if args.limit is not None and args.limit < 1:
        raise LoceditError("--limit must be >= 1")
    items = open_dataset(args.dataset, any_path=args.any_path)  # checked here, before any model is loaded
    check_output_dir(args.out)
    device = args.device
    if device == "auto":
        import torch

        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu"
    quiet_libraries(args.verbose)
    t2i = load_model(args.model, device, args.dtype) if any(m not in INSTRUCT for m in methods) else None
    ip2p = load_model(args.instruct_model, device, args.dtype) if any(m in INSTRUCT for m in methods) else None
    from ..bench.runner import LearnedMetrics

    learned_names = [m.strip() for m in args.metrics.split(",") if m.strip() and m.strip() not in ("pixel", "shapes")]
    learned = LearnedMetrics.load(learned_names) if learned_names else None
    config = BenchConfig(steps=args.steps, guidance=args.guidance, inversion=args.inversion, seed=args.seed,
                         preset=args.preset,
                         learned=learned)
    out = run_bench(items, methods, args.out, t2i, ip2p, config, args.limit, progress(args),
                    retry=not args.no_retry, dataset=args.dataset)
    from ..bench import load_rows

    return {"out": str(out), "rows": len(load_rows(out))}


def cmd_report(args) -> dict:
    from ..bench.report import write_report

    written = write_report(args.folder, args.against)
    return {"out": str(written["markdown"]), **{k: str(v) for k, v in written.items()}}


