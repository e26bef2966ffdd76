"""``locedit world``: shapes-world scenes and edit sets."""

from __future__ import annotations

import argparse

from .common import _positive_int, add_output_flags, seed


def register(sub) -> None:
    w = sub.add_parser("world", help="write shapes-world scenes or edit sets (exact ground truth) to disk",
                       description="The synthetic shapes world: seeded scenes of 1-3 objects with exact masks, "
                                   "and edits with their exact target renders.",
                       epilog="example: locedit world edits --n 30 --kinds colour+shape --out-dir shapes-edits/",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    w.add_argument("what", choices=["sample", "edits"], help="sample: scenes with captions and masks; "
                   "edits: source/target pairs with captions, instructions, masks and boxes")
    w.add_argument("--n", type=_positive_int, default=16, help="how many (default 16)")
    w.add_argument("--seed", type=seed, default=0, help="random seed, 0 to 2**32 - 1 (default 0)")
    w.add_argument("--size", type=_positive_int, default=64,
                   help="image side in pixels, 8 up to the input pixel limit, 40 megapixels (default 64)")
    w.add_argument("--kinds", default=None,
                   help="edit kinds joined by + (as in the bench's shapes:kinds=...; commas work too; edits only; "
                        "default all: colour+shape+texture+background+two)")
    w.add_argument("--out-dir", "--out", dest="out", required=True,
                   help="output folder (images, masks, scenes.jsonl or edits.jsonl); --out is the same")
    add_output_flags(w)
    w.set_defaults(run=cmd_world)


def cmd_world(args) -> dict:
    from ..errors import LoceditError
    from ..fileio import MAX_PIXELS, check_output_dir
    from ..world.edits import EDIT_KINDS
    from ..world.export import write_edits, write_scenes
    from .common import progress

    if args.size < 8 or args.size * args.size > MAX_PIXELS:
        raise LoceditError(f"--size {args.size}: the side must be 8 to {int(MAX_PIXELS ** 0.5)} pixels "
                           f"(the input pixel limit, {MAX_PIXELS // 1_000_000} megapixels)")
    if args.what == "sample" and args.kinds is not None:
        raise LoceditError("--kinds applies to 'world edits' (scenes have no edit kind)")
    check_output_dir(args.out)
    if args.what == "sample":
        out = write_scenes(args.out, args.n, args.seed, args.size, progress(args))
        return {"out": str(out), "scenes": args.n, "index": str(out / "scenes.jsonl")}
    text = args.kinds if args.kinds is not None else "+".join(EDIT_KINDS)
    kinds = tuple(k.strip() for k in text.replace(",", "+").split("+") if k.strip())
    bad = [k for k in kinds if k not in EDIT_KINDS]
    if bad or not kinds:
        raise LoceditError(f"unknown edit kind {bad[0] if bad else args.kinds!r}; choose from {', '.join(EDIT_KINDS)}")
    out = write_edits(args.out, args.n, args.seed, args.size, kinds, progress(args))
    return {"out": str(out), "edits": args.n, "index": str(out / "edits.jsonl")}


