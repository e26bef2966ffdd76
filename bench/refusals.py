"""How long a bad command line takes to be refused (issue 31: under 2 s on an idle machine).

    python bench/refusals.py            # every case, a fresh process each; a Markdown table on stdout
    python bench/refusals.py --json

Each case is a row of docs/errors.md run as ``locedit ...`` in a fresh process on the bundled
shapes model (its inputs made in a temporary folder): the time from start to exit, the exit code
(2 expected) and whether the model was loaded before the refusal (a trap in the environment makes
any model load print a marker). The cases cover each section of docs/errors.md; not every row yet.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

SRC = "a red circle and a blue striped square on a gray background"
TGT = "a green circle and a blue striped square on a gray background"


def _inputs(folder: Path) -> dict[str, str]:
    a = np.full((64, 64, 3), 128, np.uint8)
    a[20:44, 8:31] = [220, 40, 40]
    Image.fromarray(a).save(folder / "img.png")
    m = np.zeros((64, 64), np.uint8)
    m[20:44, 8:31] = 255
    Image.fromarray(m).save(folder / "mask.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(folder / "small-mask.png")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "empty-mask.png")
    (folder / "notes.txt").write_text("not an image")
    (folder / "results").mkdir()
    return {"img": str(folder / "img.png"), "mask": str(folder / "mask.png"), "dir": str(folder)}


def cases(f: dict[str, str]) -> list[tuple[str, list[str]]]:
    """(what, argv) for each case."""
    img, mask, d = f["img"], f["mask"], f["dir"]
    edit = ["edit", img, "--source", SRC, "--target", TGT, "--out", f"{d}/o.png"]
    return [
        ("missing image", ["edit", f"{d}/nope.png", "--source", SRC, "--target", TGT, "--out", f"{d}/o.png"]),
        ("not an image", ["edit", f"{d}/notes.txt", "--source", SRC, "--target", TGT, "--out", f"{d}/o.png"]),
        ("mask of another size", edit + ["--mask", f"{d}/small-mask.png"]),
        ("empty mask", edit + ["--mask", f"{d}/empty-mask.png"]),
        ("box outside the image", edit + ["--box", "0,0,900,10"]),
        ("--steps 0", edit + ["--steps", "0"]),
        ("--guidance nan", edit + ["--guidance", "nan"]),
        ("empty --target", ["edit", img, "--source", SRC, "--target", " ", "--out", f"{d}/o.png"]),
        ("word swap, different word counts", ["edit", img, "--source", "a red circle", "--target",
                                              "a red striped circle", "--p2p", "replace", "--out", f"{d}/o.png"]),
        ("blend word not in the prompt", edit + ["--blend-words", "square", "diamond"]),
        ("word outside the shapes vocabulary", ["edit", img, "--source", "a cat", "--target", "a dog",
                                                "--out", f"{d}/o.png"]),
        ("--mask with mag-edit", edit + ["--method", "mag-edit", "--mask", mask]),
        ("--region with p2p", edit + ["--region", f"green={mask}"]),
        ("--inversion with locinv", edit + ["--method", "locinv", "--inversion", "ddim", "--region", f"circle={mask}"]),
        ("--spd-steps with null-text", edit + ["--spd-steps", "3"]),
        ("--grad-checkpointing, no gradients", edit + ["--inversion", "ddim", "--grad-checkpointing"]),
        ("blended without a mask", edit + ["--method", "blended"]),
        ("--reweight without --p2p reweight", edit + ["--reweight", "green=2"]),
        ("--attention-words without --save-attention", edit + ["--attention-words", "green"]),
        ("--out is a folder", ["edit", img, "--source", SRC, "--target", TGT, "--out", f"{d}/results"]),
        ("--out of an unsupported type", ["edit", img, "--source", SRC, "--target", TGT, "--out", f"{d}/x.bmp"]),
        ("--from-inversion of a folder without one", ["edit", "--from-inversion", f"{d}/results", "--target", TGT,
                                                      "--out", f"{d}/o.png"]),
        ("instruct --mask with ip2p", ["instruct", img, "--instruction", "make the circle green", "--method", "ip2p",
                                       "--mask", mask, "--out", f"{d}/o.png"]),
        ("bench: bad ShapesEdit option", ["bench", "--dataset", "shapes:n=abc", "--methods", "p2p", "--out-dir",
                                          f"{d}/bench"]),
    ]


TRAP = ("import locedit.diffusion.loading as L, sys\n"
        "_load = L.load_model\n"
        "def load(*a, **k):\n"
        "    sys.stderr.write('MODEL-LOADED\\n')\n"
        "    return _load(*a, **k)\n"
        "L.load_model = load\n")


def run_case(argv: list[str], env: dict) -> tuple[float, int, bool, str]:
    code = TRAP + "import locedit.diffusion as D; D.load_model = L.load_model\n" \
        "from locedit.cli import main; raise SystemExit(main(sys.argv[1:]))\n"
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    err = [line for line in p.stderr.splitlines() if line.strip() and line != "MODEL-LOADED"]
    return seconds, p.returncode, "MODEL-LOADED" in p.stderr, (err[-1] if err else "")[:110]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = _inputs(Path(tmp))
        for what, case in cases(files):
            seconds, rc, loaded, line = run_case(case, env)
            rows.append({"case": what, "seconds": round(seconds, 2), "exit": rc, "model_loaded": loaded, "message": line})
            print(f"{what}: {seconds:.2f} s, exit {rc}{', model loaded' if loaded else ''}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| case | seconds | exit | model loaded first | message |\n|---|---:|---:|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['seconds']:.2f} | {r['exit']} | {'yes' if r['model_loaded'] else 'no'} | "
              f"`{r['message']}` |")
    slow = [r for r in rows if r["seconds"] >= 2.0]
    print(f"\n{len(rows)} cases; {len(slow)} at or over 2 s; {sum(r['model_loaded'] for r in rows)} loaded the model "
          "before refusing")


if __name__ == "__main__":
    main()
