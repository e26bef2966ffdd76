"""How long a bad command line takes to be refused (issue 31: under 2 s on an idle machine).

    python bench/refusals.py            # every case, a fresh process each; a Markdown table on stdout
    python bench/refusals.py --json

Each case is a row of docs/errors.md run as ``locedit ...`` in a fresh process on the bundled
shapes model (its inputs made in a temporary folder): the time from start to exit, the exit code
(2 expected) and whether the model was loaded before the refusal (a trap in the environment makes
any model load print a marker, and whether torch was imported at all). The cases are the rows of
docs/errors.md that the command line and its files can show; the rows that need the model's weights
or a run (a scheduler's step range, a UNet's blocks, an empty DiffEdit mask, a failing write, a
saved trajectory against another model) are not in it.
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
    flow = ["flow", img, "--source", SRC, "--target", TGT, "--model", f"{d}/no-such-flux", "--out", f"{d}/o.png"]
    flow_edit = ["edit"] + flow[1:]
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
        # the rest of docs/errors.md's rows that a command line alone can show
        ("image is a folder", ["edit", f"{d}/results", "--source", SRC, "--target", TGT, "--out", f"{d}/o.png"]),
        ("over the pixel limit", edit + ["--max-image-pixels", "100"]),
        ("--seed -1", edit + ["--seed", "-1"]),
        ("a fraction outside [0, 1]", edit + ["--cross-replace", "1.5"]),
        ("empty --source", ["edit", img, "--source", " ", "--target", TGT, "--out", f"{d}/o.png"]),
        ("empty --instruction", ["instruct", img, "--instruction", " ", "--out", f"{d}/o.png"]),
        ("prompt over the tokenizer's limit", ["edit", img, "--source", SRC, "--target", " ".join([TGT] * 4),
                                               "--p2p", "refine", "--out", f"{d}/o.png"]),
        ("region word not in the prompt", edit + ["--method", "mag-edit", "--region", f"square={mask}",
                                                  "--region", f"diamond={mask}"]),
        ("the same region word twice", edit + ["--method", "mag-edit", "--region", f"green={mask}",
                                               "--region", f"green={mask}"]),
        ("mag-edit without a region", edit + ["--method", "mag-edit"]),
        ("--inversion with --from-inversion", ["edit", "--from-inversion", d, "--inversion", "ddim", "--target",
                                               TGT, "--out", f"{d}/o.png"]),
        ("--ccl-form with mag-edit", edit + ["--method", "mag-edit", "--region", f"green={mask}", "--ccl-form",
                                             "ratio"]),
        ("--locinv-restart-iterations without restart", edit + ["--method", "locinv", "--region", f"circle={mask}",
                                                               "--locinv-restart-iterations", "3"]),
        ("--inversion with sdedit", edit + ["--method", "sdedit", "--inversion", "ddim"]),
        ("--blended-init noise with inversion noise", edit + ["--method", "blended", "--mask", mask, "--blended-init",
                                                             "noise", "--blended-noise", "inversion"]),
        ("pnp on null-text with its negative prompt", edit + ["--method", "pnp", "--inversion", "null-text"]),
        ("--mask-from with --mask", edit + ["--mask-from", "diffedit", "--mask", mask]),
        ("--blend-threshold without --blend-words", edit + ["--blend-threshold", "0.5"]),
        ("--masactrl-step past the steps", edit + ["--method", "masactrl", "--steps", "10", "--masactrl-step", "20"]),
        ("--masactrl-auto word not in the prompt", edit + ["--method", "masactrl", "--masactrl-auto", "diamond"]),
        ("--out folder that cannot be created", ["edit", img, "--source", SRC, "--target", TGT, "--out",
                                                 f"{d}/notes.txt/o.png"]),
        ("invert --out-dir is a file", ["invert", img, "--source", SRC, "--out-dir", f"{d}/notes.txt"]),
        ("bench: unknown ShapesEdit kind", ["bench", "--dataset", "shapes:kinds=zebra", "--methods", "p2p",
                                            "--out-dir", f"{d}/bench"]),
        ("bench: unknown method", ["bench", "--dataset", "shapes:n=2", "--methods", "foo", "--out-dir", f"{d}/bench"]),
        # the flow editors (locedit flow): refused from the flags and files, torch not imported
        ("flow: kv-edit without a mask", flow + ["--method", "kv-edit"]),
        ("flow: an option of another editor", flow + ["--inject", "3"]),
        ("flow: --mask and --blend-words", flow + ["--mask", mask, "--blend-words", "circle", "circle"]),
        ("flow: blend word not in the prompt", flow + ["--blend-words", "diamond", "circle"]),
        ("flow: mask of another size", flow + ["--mask", f"{d}/small-mask.png"]),
        ("flow: a word outside the world on shapes-flow", ["flow", img, "--source", SRC, "--target", "a green dog",
                                                           "--model", "shapes-flow", "--out", f"{d}/o.png"]),
        ("edit: a flow editor with a UNet method's input", flow_edit + ["--method", "flowedit", "--region",
                                                                        f"circle={mask}"]),
        ("edit: --guidance with flowedit (two scales)", flow_edit + ["--method", "flowedit", "--guidance", "3"]),
        ("edit: a flow editor's option with p2p", edit + ["--inject", "3"]),
        # the flow inversions (locedit invert --inversion euler|rf-solver|...): their flags, torch not imported
        ("invert: another inversion's option", ["invert", img, "--source", SRC, "--inversion", "euler", "--gamma", "0.3",
                                                "--out-dir", f"{d}/inv"]),
        ("invert: --preset with a flow inversion", ["invert", img, "--source", SRC, "--inversion", "rf-solver",
                                                   "--preset", "paper", "--out-dir", f"{d}/inv"]),
    ]


# Installed before locedit is imported, importing nothing heavy itself: wraps load_model when its
# module is first imported (a marker on stderr if it is called), and says at exit whether torch was
# imported at all.
TRAP = """
import atexit, importlib.abc, importlib.util, sys

class _Trap(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "locedit.diffusion.loading":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            load = module.load_model

            def traced(*a, **k):
                sys.stderr.write("MODEL-LOADED\\n")
                return load(*a, **k)

            module.load_model = traced

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Trap())
atexit.register(lambda: sys.stderr.write("TORCH-IMPORTED\\n") if "torch" in sys.modules else None)
from locedit.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
sys.stderr.flush()
raise SystemExit(code)
"""
MARKERS = ("MODEL-LOADED", "TORCH-IMPORTED")


def run_case(argv: list[str], env: dict) -> tuple[float, int, bool, bool, str]:
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", TRAP, *argv], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    err = [line for line in p.stderr.splitlines() if line.strip() and line not in MARKERS]
    return seconds, p.returncode, "MODEL-LOADED" in p.stderr, "TORCH-IMPORTED" in p.stderr, (err[-1] if err else "")[:110]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        files = _inputs(Path(tmp))
        for what, case in cases(files):
            seconds, rc, loaded, torch, line = run_case(case, env)
            rows.append({"case": what, "seconds": round(seconds, 2), "exit": rc, "model_loaded": loaded,
                         "torch_imported": torch, "message": line})
            print(f"{what}: {seconds:.2f} s, exit {rc}{', model loaded' if loaded else ''}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print("| case | seconds | exit | model loaded first | torch imported | message |\n|---|---:|---:|---|---|---|")
    for r in rows:
        print(f"| {r['case']} | {r['seconds']:.2f} | {r['exit']} | {'yes' if r['model_loaded'] else 'no'} | "
              f"{'yes' if r['torch_imported'] else 'no'} | `{r['message']}` |")
    slow = [r for r in rows if r["seconds"] >= 2.0]
    print(f"\n{len(rows)} cases; {len(slow)} at or over 2 s; {sum(r['model_loaded'] for r in rows)} loaded the model "
          "before refusing")


if __name__ == "__main__":
    main()
