"""locedit's flow editors side by side with their authors' code, on one random-weight FLUX model:

    python bench/peers/flux_run.py flowedit --checkout ~/src/FlowEdit
    python bench/peers/flux_run.py rf-inversion --checkout ~/src/diffusers      # its community pipeline
    python bench/peers/flux_run.py rf-solver-edit --checkout ~/src/RF-Solver-Edit
    python bench/peers/flux_run.py fireflow --checkout ~/src/FireFlow
    python bench/peers/flux_run.py kv-edit --checkout ~/src/KV-Edit --steps 6 --repeats 3
    python bench/peers/flux_run.py uniedit-flow --checkout ~/src/UniEdit-Flow
    python bench/peers/flux_run.py table FIGURES.json

RF-Solver-Edit, FireFlow and KV-Edit run FLUX through Black Forest Labs' reference ``flux`` package
(each its own copy), not diffusers; FlowEdit runs diffusers' pipelines (its tested diffusers 0.30.1,
FLUX and SD3). This writes FLUX.1's architecture at width 32 with random weights (2
double-stream and 22 single-stream blocks - RF-Solver-Edit's code shares the values of blocks
above 19 - and FLUX.1's 16 latent channels) as a diffusers folder; locedit loads it through its
loader, the official side renames the same safetensors to the reference layout and loads them
strictly into the repository's own model class (``drivers/flux_official.py``). Both sides get the
same source latent (a shapes scene through the random VAE), the same T5 / CLIP encodings (T5 padded
to 512 tokens, which the KV-Edit code hard-codes) and the same mask; the text encoders and the VAE
are not what is compared. Each run is a fresh process, the sides alternated, ``--repeats`` times; the
table (bench/peers/run.py's) gives the largest latent difference, times, transformer calls and
memory. The user's checkout is copied and adapted by the patches listed per peer (devices and
dtypes only), never modified; nothing of it is committed. docs/peers.md has the results.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (DEFAULT_WORK, DRIVERS, HERE, Patch, Peer, PeerError, build_env, checkout_commit,  # noqa: E402
                    compare, prepare_checkout, run_process, summarise)
import run as peers_run  # noqa: E402
from run import MALLOC, _calls, checked_run, shared_options, table  # noqa: E402

SHIMS = HERE / "flux_shims"
SOURCE, TARGET = "a red circle and a blue square on a gray background", \
    "a green circle and a blue square on a gray background"
REQUIREMENTS = ("einops==0.8.0", "transformers==4.49.0", "safetensors", "tqdm", "numpy")


@dataclass(frozen=True)
class Run:
    """One row: locedit's editor and options, the official side's method and options, the mask, the
    model family (the shared FLUX folder, or the SD3 one)."""

    editor: str
    locedit: dict
    official: dict
    mask: bool = False
    family: str = "flux"


def _rf_patches(size, device, steps):
    return [Patch("FLUX_Image_Edit/src/flux/modules/layers.py", "v = info['feature'][feature_name].cuda()",
                  "v = info['feature'][feature_name].to(q.device)",
                  why="device: the stored values come back to the model's device (the code assumes CUDA)")]


def _fireflow_patches(size, device, steps):
    return [Patch("src/flux/modules/layers.py", ".cuda()", ".to(x.device)", 7,
                  why="device: the stored features come back to the model's device (the code assumes CUDA)")]


def _uniedit_patches(size, device, steps):
    return [Patch("UniEdit-Flow_FLUX/src/flux/modules/layers.py", ".cuda()", ".to(x.device)", 7,
                  why="device: the stored features come back to the model's device (the code assumes CUDA)")]


def _kv_patches(size, device, steps):
    return [Patch("models/kv_edit.py", "attention_scale = torch.zeros(1, seq_len, dtype=torch.bfloat16, device=device)",
                  "attention_scale = torch.zeros(1, seq_len, dtype=torch.float32, device=device)",
                  why="dtype: the logit bias in the run's float32 (the code builds it in bfloat16 for its bfloat16 "
                      "model; scaled_dot_product_attention refuses a bias of another dtype; 1.0 is exact in both)")]


def _kv(steps: int, **extra) -> Run:
    o = {"steps": steps, "skip": 1, "inversion_guidance": 1.5, "guidance": 5.5, "attn_scale": 1.0, "re_init": False,
         "attn_mask": False, "inversion_free": False, **extra}
    return Run("kv-edit", o, o, mask=True)


def _flowedit(steps: int, family: str) -> Run:
    n_max = max(1, steps - 2)
    scales = {"flux": (1.5, 5.5), "sd3": (3.5, 13.5)}[family]
    o = {"steps": steps, "n_max": n_max, "n_min": 0, "n_avg": 1, "src_guidance": scales[0], "tar_guidance": scales[1]}
    return Run("flowedit", o, o, family=family)


def _rf_inversion(steps: int) -> Run:
    o = {"steps": steps, "gamma": 0.5, "inversion_guidance": 0.0, "eta": 0.9, "start": 0.0, "stop": 0.38,
         "guidance": 3.5}
    return Run("rf-inversion", o, o)


PEERS = {
    "uniedit-flow": (
        Peer(name="uniedit-flow", repository="https://github.com/DSL-Lab/UniEdit-Flow", requirements=REQUIREMENTS,
             adjustments=(), patches=_uniedit_patches, methods=("uniedit-flow", "uniedit-flow-zero-init"),
             python_path=("UniEdit-Flow_FLUX/src",)),
        lambda steps: {"uniedit-flow": Run("uniedit-flow", {"steps": steps, "alpha": 0.6, "omega": 5.0, "guidance": 1.5},
                                           {"steps": steps, "alpha": 0.6, "omega": 5.0, "guidance": 1.5}),
                       "uniedit-flow-zero-init": Run("uniedit-flow",
                                                     {"steps": steps, "alpha": 0.8, "omega": 5.0, "guidance": 1.0,
                                                      "zero_init": True},
                                                     {"steps": steps, "alpha": 0.8, "omega": 5.0, "guidance": 1.0,
                                                      "zero_init": True})}),
    "rf-inversion": (
        Peer(name="rf-inversion", repository="https://github.com/huggingface/diffusers (examples/community/"
                                             "pipeline_flux_rf_inversion.py)",
             requirements=("diffusers==0.42.1", "transformers==5.25.0", "sentencepiece", "protobuf", "safetensors",
                           "numpy", "tqdm"),
             adjustments=(), patches=lambda size, device, steps: [], methods=("rf-inversion",),
             python_path=("examples/community",),
             notes=("the community pipeline on the diffusers and transformers releases locedit runs on (the file "
                    "follows diffusers' main branch and pins nothing); its `encode_image` is replaced by the shared "
                    "latent (its VAE `sample()` would draw from the global generator before the pipeline's noise "
                    "draw, and the VAE is not what is compared)",)),
        lambda steps: {"rf-inversion": _rf_inversion(steps)}),
    "flowedit": (
        Peer(name="flowedit", repository="https://github.com/fallenshock/FlowEdit",
             requirements=("diffusers==0.30.1", "transformers==4.44.2", "sentencepiece", "protobuf", "safetensors",
                           "numpy", "tqdm"),
             adjustments=(("huggingface-hub==0.24.6", "unpinned upstream; the hub release of diffusers 0.30's time "
                                                      "(later ones drop names it imports)"),),
             patches=lambda size, device, steps: [], methods=("flowedit-flux", "flowedit-sd3"),
             notes=("the README's install line (`torch diffusers transformers accelerate sentencepiece protobuf`) "
                    "with its tested `diffusers==0.30.1`; accelerate left out (loading only)",
                    "the FLUX folder it reads is a copy adapted to transformers 4.x (`_legacy_copy`: tokenizer class "
                    "name, CLIP weights under `text_model.`)",
                    "SD3 without its T5 encoder: diffusers 0.30 pads the absent T5 with `tokenizer_max_length` zero "
                    "tokens (77 on SD3), diffusers 0.42 with `max_sequence_length` (256); the SD3 row runs locedit "
                    "with the 0.30 length so that both encodings agree - a difference of diffusers' releases, not "
                    "of FlowEdit's")),
        lambda steps: {"flowedit-flux": _flowedit(steps, "flux"), "flowedit-sd3": _flowedit(steps, "sd3")}),
    "rf-solver-edit": (
        Peer(name="rf-solver-edit", repository="https://github.com/wangjiangshan0725/RF-Solver-Edit",
             requirements=REQUIREMENTS, adjustments=(), patches=_rf_patches, methods=("rf-solver-edit",),
             python_path=("FLUX_Image_Edit/src",),
             notes=("one environment for the three FLUX peers: torch 2.13 and the einops the code imports (0.8.0, "
                    "RF-Solver-Edit's pin), transformers 4.49.0 (KV-Edit's pin; imported by the reference "
                    "conditioner module, unused), safetensors, tqdm, numpy",)),
        lambda steps: {"rf-solver-edit": Run("rf-solver-edit",
                                             {"steps": steps, "inject": 2, "guidance": 2.0, "single_from": 20},
                                             {"steps": steps, "inject": 2, "guidance": 2.0})}),
    "fireflow": (
        Peer(name="fireflow", repository="https://github.com/HolmesShuan/FireFlow", requirements=REQUIREMENTS,
             adjustments=(), patches=_fireflow_patches, methods=("fireflow-edit",), python_path=("src",)),
        lambda steps: {"fireflow-edit": Run("fireflow-edit",
                                            {"steps": steps, "inject": 2, "guidance": 2.0, "single_from": 0},
                                            {"steps": steps, "inject": 2, "guidance": 2.0, "single_from": 0,
                                             "single_to": 21})}),
    "kv-edit": (
        Peer(name="kv-edit", repository="https://github.com/Xilluill/KV-Edit", requirements=REQUIREMENTS,
             adjustments=(), patches=_kv_patches, methods=("kv-edit", "kv-edit-reinit-attnmask", "kv-edit-free"),
             shims=("imwatermark",),
             notes=("`imwatermark` (invisible-watermark) is a stand-in (bench/peers/flux_shims): the reference "
                    "flux/util.py builds a watermark encoder at import, used on decoded images only",)),
        lambda steps: {"kv-edit": _kv(steps), "kv-edit-reinit-attnmask": _kv(steps, re_init=True, attn_mask=True),
                       "kv-edit-free": _kv(steps, inversion_free=True, attn_mask=True)}),
}


def _legacy_clip_files(*folders: Path) -> None:
    """``vocab.json`` + ``merges.txt`` beside a CLIP tokenizer's ``tokenizer.json`` (what the slow
    ``CLIPTokenizer`` of older transformers - FlowEdit's environment - reads), from the same BPE."""
    for folder in folders:
        bpe = json.loads((folder / "tokenizer.json").read_text())["model"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
        (folder / "vocab.json").write_text(json.dumps(bpe["vocab"]))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{m}\n" for m in merges))


def _legacy_copy(model: Path) -> Path:
    """The FLUX folder as transformers 4.x reads it (FlowEdit's environment): the T5 tokenizer named
    ``T5TokenizerFast`` (4.x's ``T5Tokenizer`` is the sentencepiece one, and the word-level tokenizer
    has only its ``tokenizer.json``) and the CLIP text encoder's weights under ``text_model.`` (4.x
    leaves the unprefixed ones unloaded, randomly initialised); the same weights otherwise."""
    import shutil

    legacy = model.with_name(model.name + "-legacy")
    if not (legacy / "model_index.json").exists():
        shutil.copytree(model, legacy, dirs_exist_ok=True)
        index = json.loads((legacy / "model_index.json").read_text())
        index["tokenizer_2"] = ["transformers", "T5TokenizerFast"]
        (legacy / "model_index.json").write_text(json.dumps(index, indent=2))
        cfg = json.loads((legacy / "tokenizer_2" / "tokenizer_config.json").read_text())
        cfg["tokenizer_class"] = "T5TokenizerFast"
        (legacy / "tokenizer_2" / "tokenizer_config.json").write_text(json.dumps(cfg, indent=2))
        from safetensors.torch import load_file, save_file

        path = legacy / "text_encoder" / "model.safetensors"  # transformers 5 drops CLIPTextModel's text_model. prefix
        state = load_file(path)
        save_file({(k if k.startswith("text_model.") else "text_model." + k): v.contiguous() for k, v in state.items()},
                  str(path), metadata={"format": "pt"})
    return legacy


def make_inputs(work: Path, size: int) -> dict:
    """The model folder and the shared inputs (``inputs-<size>.npz``), written when missing."""
    import numpy as np
    import torch

    from locedit.diffusion import load_model
    from locedit.diffusion.tiny_flow import tiny_flux
    from locedit.world.scene import Obj, Scene, render

    from locedit.diffusion.tiny_flow import tiny_sd3

    model, sd3 = work / "model-flux-22", work / "model-sd3"
    if not (model / "model_index.json").exists():
        tiny_flux(0, num_layers=2, num_single_layers=22, latent_channels=16).save_pretrained(model,
                                                                                           safe_serialization=True)
        _legacy_clip_files(model / "tokenizer")
    if not (sd3 / "model_index.json").exists():
        tiny_sd3(0).save_pretrained(sd3, safe_serialization=True)
        _legacy_clip_files(sd3 / "tokenizer", sd3 / "tokenizer_2")
    path = work / f"inputs-{size}.npz"
    if not path.exists():
        bundle = load_model(str(model), "cpu", "fp32")
        bundle.max_sequence_length = 512
        scene = Scene((Obj("circle", "red", "plain", 0.3, 0.5, 0.34), Obj("square", "blue", "plain", 0.72, 0.5, 0.3)),
                      "gray")
        img, _ = render(scene, size)
        picture = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
        x = bundle.encode_image(picture)
        _, masks = render(scene, 8 * x.shape[-1])  # the mask at the size the KV-Edit code expects (VAE factor 8)
        s, t, e = bundle.encode_text([SOURCE]), bundle.encode_text([TARGET]), bundle.encode_text([""])
        np.savez(path, x=x.numpy(), x_sd3=load_model(str(sd3), "cpu", "fp32").encode_image(picture).numpy(),
                 src_states=s.states.numpy(), src_pooled=s.pooled.numpy(),
                 empty_states=e.states.numpy(), empty_pooled=e.pooled.numpy(),
                 tar_states=t.states.numpy(), tar_pooled=t.pooled.numpy(),
                 mask=masks[0][None, None].astype(np.float32))
    return {"model": str(model), "model_legacy": str(_legacy_copy(model)), "model_sd3": str(sd3), "inputs": str(path)}


def run(args) -> dict:
    peer, runs_of = PEERS[args.peer]
    work = Path(args.work).expanduser() / "flux"
    work.mkdir(parents=True, exist_ok=True)
    checkout = Path(args.checkout).expanduser().resolve()
    chosen = args.methods.split(",") if args.methods else list(peer.methods)
    bad = [m for m in chosen if m not in peer.methods]
    if bad:
        raise PeerError(f"{peer.name} has no method {bad[0]!r}; choose from {', '.join(peer.methods)}")
    # one environment for the three reference-package peers; the diffusers peers have their own
    python = build_env(peer if peer.name in ("flowedit", "rf-inversion") else replace(peer, name="flux-reference"),
                       work)
    src = prepare_checkout(peer, checkout, work, args.size, args.device, args.steps)
    base = {**make_inputs(work, args.size), "device": args.device, "seed": 0, "source": SOURCE, "target": TARGET}
    if args.threads:
        base["threads"] = args.threads
    shims = work / "shims"
    shims.mkdir(exist_ok=True)
    for name in peer.shims:
        link = shims / name
        if not link.exists():
            link.symlink_to(SHIMS / name)
    official_path = [*(src / p for p in peer.python_path), *([shims] if peer.shims else [])]
    runs = work / peer.name / "runs"
    model_diff = {}
    if peer.name not in ("flowedit", "rf-inversion"):  # the diffusers peers load the pipeline: their rows compare it
        probe = {**base, "method": "model", "options": {}, "editor": "model"}
        run_process(python, DRIVERS / "flux_official.py", probe, runs / "model-official.json",
                    python_path=official_path)
        run_process(sys.executable, DRIVERS / "flux_locedit.py", probe, runs / "model-locedit.json")
        model_diff = {"velocity": compare(runs / "model-official.npz", runs / "model-locedit.npz")["max_diff_latents"]}
        print(f"[{peer.name}] one transformer call, both sides: largest difference {model_diff['velocity']:.1e}",
              file=sys.stderr)
    rows = []
    for method in chosen:
        r = runs_of(args.steps)[method]
        sides = {"official": [], "locedit": []}
        for k in range(args.repeats):
            for side in (("official", "locedit") if k % 2 == 0 else ("locedit", "official")):
                out = runs / f"{method}-{side}-{k}.json"
                family = {"family": r.family} if r.family == "flux" else {"family": "sd3", "model": base["model_sd3"]}
                if side == "official":
                    spec = {**base, **family, "method": r.editor, "options": r.official}
                    if peer.name == "flowedit" and r.family == "flux":
                        spec["model"] = base["model_legacy"]
                    fig = run_process(python, DRIVERS / "flux_official.py", spec, out, env_extra=MALLOC[args.malloc],
                                      python_path=official_path)
                else:
                    spec = {**base, **family, "editor": r.editor, "options": r.locedit, "mask": r.mask}
                    if peer.name == "flowedit" and r.family == "sd3":  # diffusers 0.30's zero T5 length (see notes)
                        spec["t5_absent_length"] = json.loads(
                            (Path(base["model_sd3"]) / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"]
                    fig = run_process(sys.executable, DRIVERS / "flux_locedit.py", spec, out,
                                      env_extra=MALLOC[args.malloc])
                sides[side].append(fig)
                print(f"[{peer.name}] {method} {side} #{k}: {fig['seconds']:.2f} s, calls {_calls(fig['unet_calls'])}, "
                      f"peak RSS {fig['peak_rss_gib']:.2f} GiB", file=sys.stderr)
        row = {"method": method, **compare(runs / f"{method}-official-0.npz", runs / f"{method}-locedit-0.npz"),
               "locedit_options": r.locedit}
        for side, figs in sides.items():
            row[side] = {key: summarise([f[key] for f in figs])
                         for key in ("seconds", "peak_rss_gib", "base_rss_gib", "work_rss_gib")}
            row[side]["unet_calls"] = figs[0]["unet_calls"]
        rows.append(row)
    return {"peer": peer.name, "repository": peer.repository, "commit": checkout_commit(checkout),
            "model_diff": model_diff, "size": args.size, "steps": args.steps, "device": args.device,
            "repeats": args.repeats, "malloc": args.malloc,
            "machine": f"{platform.machine()}, {platform.python_version()}", "rows": rows,
            "environment": list(peer.requirements),
            "patches": [{"file": p.file, "old": p.old, "new": p.new, "why": p.why}
                        for p in peer.patches(args.size, args.device, args.steps)]}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["table"]:  # a saved --json file, re-printed as run.py prints its own
        return peers_run.main(argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("peer", choices=sorted(PEERS))
    p.add_argument("--checkout", required=True, help="your clone of the official repository")
    p.add_argument("--work", default=str(DEFAULT_WORK), help="environment, adapted copies, model, runs (under flux/)")
    shared_options(p, size=32, steps=6, steps_help="the editors' own defaults are 8-50", repeats=3, size_step=16)
    return checked_run(p, argv, run, table, sizes=(16, 16, 512), min_steps=2)


if __name__ == "__main__":
    sys.exit(main())
