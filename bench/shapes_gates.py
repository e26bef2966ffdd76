"""Measure the bundled shapes models' quality gates (issue: the shapes world).

    python bench/shapes_gates.py                       # all gates, 200 held-out scenes, 50 steps
    python bench/shapes_gates.py --n 20 --gates vae,t2i
    python bench/shapes_gates.py --gates flow-t2i --flow-model ~/.cache/locedit-train/shapes-flow/ema \
        --flow-vae locedit/models/shapes/vae   # F1 of shapes-flow (a FluxPipeline folder, or a run's ema/)
    python bench/shapes_gates.py --gates flow-inversion --n 50 --flow-model locedit/models/shapes-flow   # F2
    python bench/shapes_gates.py --gates flow-edit --n 100 --flow-model locedit/models/shapes-flow       # F3
    python bench/shapes_gates.py --gates flow-kv-edit,flow-blend-words --n 100 --flow-model locedit/models/shapes-flow  # F4, F5

Prints a Markdown table (measured, gate, met) and, with --json, the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from locedit.diffusion import load_model
from locedit.progress import tqdm_progress
from locedit.world import gates as G


FLOW_GATES = {"flow-t2i": "gate_flow_t2i", "flow-inversion": "gate_flow_inversion", "flow-edit": "gate_flow_edit",
              "flow-kv-edit": "gate_kv_edit", "flow-blend-words": "gate_blend_words"}  # F1-F5


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--gates", default="vae,t2i,nti,instruct,p2p-colour,p2p-shape")
    p.add_argument("--model", default="shapes")
    p.add_argument("--instruct-model", default="shapes-instruct")
    p.add_argument("--flow-model", help="shapes-flow: a FluxPipeline folder, or a training run's ema/ folder")
    p.add_argument("--flow-vae", help="with a run's ema/ folder: the VAE it was trained on (the shapes VAE)")
    p.add_argument("--flow-steps", type=int, default=28, help="Euler steps of the flow gates (FLUX's 28)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    chosen = args.gates.split(",")
    figures, seconds = {}, {}
    t2i = load_model(args.model, args.device) if {"vae", "t2i", "nti", "p2p-colour", "p2p-shape"} & set(chosen) else None
    for name in chosen:
        t0 = time.time()
        if name == "vae":
            figures.update(G.gate_vae(t2i, args.n))
        elif name == "t2i":
            figures.update(G.gate_t2i(t2i, args.n, args.steps, progress=tqdm_progress))
        elif name == "nti":
            figures.update(G.gate_nti(t2i, args.n, args.steps, progress=tqdm_progress))
        elif name == "p2p-colour":
            figures.update(G.gate_p2p_colour(t2i, args.n, args.steps, progress=tqdm_progress))
        elif name == "p2p-shape":
            figures.update(G.gate_p2p_shape(t2i, args.n, args.steps, progress=tqdm_progress))
        elif name in FLOW_GATES:
            from locedit.world import train_flow as TF

            pipe = TF.load_flow_pipeline(args.flow_model, args.flow_vae)
            gate = getattr(TF, FLOW_GATES[name])
            figures.update(gate(pipe, args.n, args.flow_steps))
        elif name == "instruct":
            figures.update(G.gate_instruct(load_model(args.instruct_model, args.device), args.n, args.steps,
                                           progress=tqdm_progress))
        seconds[name] = time.time() - t0
        print(f"{name}: {time.time() - t0:.1f} s", file=sys.stderr)
    flows = set(FLOW_GATES)
    steps = ", ".join([f"{args.steps} DDIM steps"] * bool(set(chosen) - flows)
                      + [f"{args.flow_steps} Euler steps (flow)"] * bool(flows & set(chosen)))
    print(f"\n{args.n} held-out items, {steps}\n")
    print("| gate | measured | threshold | met |\n|---|---:|---:|---|")
    for key, threshold in G.GATES.items():
        if key in figures:
            v = figures[key]
            print(f"| {key} | {v:.3f} | {threshold} | {'yes' if v >= threshold else 'NO'} |")
    for key, v in figures.items():
        if key not in G.GATES and key != "n":
            print(f"| {key} (info) | {v:.3f} | | |")
    if args.json:
        print(json.dumps({"figures": figures, "seconds": seconds}, indent=2))


if __name__ == "__main__":
    main()
