"""PIE-Bench's metrics: locedit's against PnPInversion's own evaluation code (issue 35, item 1).

    python bench/peers/pnp_metrics.py --checkout ~/src/PnPInversion --dino ~/src/dino [--n 6] [--json out.json]

PnPInversion's ``evaluation/evaluate.py`` (``mask_decode``, ``calculate_metric``) and
``evaluation/matrics_calculator.py`` (``MetricsCalculator``) run in their own environment (torch
2.13.0, ``torchmetrics==1.2.0`` - unpinned upstream: the release of the code's time -,
``lightning-utilities==0.11.9``, ``transformers==4.34.0``, numpy, Pillow, and torchvision 0.28.0's
Python code: see :func:`torchvision_code`) on the same images, prompts and run-length masks as
locedit's ``decode_pie_mask`` and ``locedit.metrics`` as ``locedit bench`` calls them: every metric
of PIE-Bench's table, whole image, unedited part and edited part, plus the decoded masks.

Two runs. "pixel": PSNR, MSE, SSIM, the calculator built without its ``__init__``. "learned" (unless
``--pixel-only``): LPIPS (SqueezeNet), the DINO structure distance and the CLIP scores, the
calculator built by its own ``__init__``, which loads torchvision's SqueezeNet, DINO ViT-B/8 through
``torch.hub`` (``--dino``: a clone of facebookresearch/dino) and CLIP from the Hugging Face cache:
their files are put, random and seeded, where those loaders look (``drivers/pnp_metrics_official.py``),
in scratch ``TORCH_HOME`` / ``HF_HOME`` folders, and locedit loads the same files - SqueezeNet's
features and torchmetrics' own LPIPS heads into :class:`locedit.metrics.learned.LPIPS`, DINO's
checkpoint converted to ``transformers``' ``ViTModel`` as the hub's ``facebook/dino-vitb8`` was
(its ``convert_dino_to_pytorch.py``: ``ViTConfig()`` with patch 8, so LayerNorm eps 1e-12 where
DINO's is 1e-6; ``--dino-eps`` sets it), the CLIP folder by ``load_clip``. Nothing of the checkouts
is copied into locedit.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import DEFAULT_WORK, DRIVERS, Peer, PeerError, build_env, checkout_commit, run_process  # noqa: E402

PEER = Peer(name="pnp-metrics", repository="https://github.com/cure-lab/PnPInversion (evaluation/)",
            requirements=("torchmetrics==1.2.0", "numpy", "Pillow"),
            adjustments=(("lightning-utilities==0.11.9", "torchmetrics 1.2.0 takes >= 0.8; 0.9.0 (its time) imports "
                                                         "pkg_resources, which the setuptools torch 2.13 needs no longer ships"),
                         ("transformers==4.34.0", "torchmetrics defines CLIPScore, which the module imports, only with "
                                                  "transformers installed (the release of the code's time; the class "
                                                  "is imported, never built)")),
            patches=lambda size, device, steps: [], methods=("pixel", "learned"))
METRICS = ("psnr", "mse", "ssim", "psnr_unedit_part", "mse_unedit_part", "ssim_unedit_part", "psnr_edit_part",
           "mse_edit_part", "ssim_edit_part")
LEARNED = ("lpips", "lpips_unedit_part", "lpips_edit_part", "structure_distance", "structure_distance_unedit_part",
           "structure_distance_edit_part", "clip_similarity_source_image", "clip_similarity_target_image",
           "clip_similarity_target_image_edit_part")
TORCHVISION = "torchvision==0.28.0"  # the release built for torch 2.13
SIZE = 512  # mask_decode's default shape


def rle(mask) -> list[int]:
    """PIE-Bench's run-length code of a (SIZE, SIZE) 0/1 mask: [start, length, ...] over the row-major
    flattening."""
    import numpy as np

    flat = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    return [int(v) for pair in zip(edges[0::2], edges[1::2] - edges[0::2]) for v in pair]


def make_items(work: Path, n: int) -> list[dict]:
    """``n`` (source, edit, mask) triples at 512 px: shapes scenes, the edit a recoloured object plus
    noise, the mask its object's (run-length coded), one with an empty mask."""
    import random

    import numpy as np
    from PIL import Image

    from locedit.world.edits import sample_edit

    rng, noise = random.Random(7), np.random.default_rng(7)
    items = []
    work.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        e = sample_edit(rng, "colour")
        src = e.render_source(SIZE)
        tgt = np.clip(e.render_target(SIZE).astype(int) + noise.integers(-12, 13, src.shape), 0, 255).astype(np.uint8)
        mask = e.mask(SIZE).astype(np.uint8) if k < n - 1 else np.zeros((SIZE, SIZE), np.uint8)
        Image.fromarray(src).save(work / f"src-{k}.png")
        Image.fromarray(tgt).save(work / f"tgt-{k}.png")
        items.append({"src": str(work / f"src-{k}.png"), "tgt": str(work / f"tgt-{k}.png"), "rle": rle(mask),
                      "source_prompt": e.source_caption, "target_prompt": e.target_caption})
    return items


def torchvision_code(python: Path, work: Path) -> Path:
    """torchvision 0.28.0's Python code, unpacked from its wheel (``pip download --no-deps``) into
    ``work/pnp-metrics/torchvision-py``, without its compiled libraries and with one change: its
    ``__init__`` no longer imports ``_meta_registrations`` and ``_autograd_registrations``, which
    register kernels for the compiled ``torchvision::`` operators - the wheels on the registries link
    CUDA's libraries, so those operators never exist beside the CPU torch ("operator torchvision::nms
    does not exist"). The evaluation uses none of them: ``transforms`` (Resize, Normalize) and
    ``models`` (SqueezeNet 1.1, ResNet for DINO's hubconf) are torchvision's own code, unchanged."""
    import zipfile

    dest = work / PEER.name / "torchvision-py"
    if (dest / "torchvision" / "__init__.py").exists():
        return dest
    wheels = work / PEER.name / "wheels"
    proc = subprocess.run([str(python), "-m", "pip", "download", "--quiet", "--no-deps", "--disable-pip-version-check",
                           TORCHVISION, "-d", str(wheels)], capture_output=True, text=True)
    found = sorted(wheels.glob("torchvision-*.whl"))
    if proc.returncode or not found:
        raise PeerError(f"pip could not download {TORCHVISION}: {proc.stderr.strip().splitlines()[-1:]}")
    with zipfile.ZipFile(found[-1]) as z:
        for name in z.namelist():
            if name.startswith("torchvision/") and name.endswith(".py"):
                z.extract(name, dest)
    init = dest / "torchvision" / "__init__.py"
    text = init.read_text()
    old = "    _autograd_registrations,\n    _meta_registrations,\n"
    if text.count(old) != 1:
        raise PeerError(f"{TORCHVISION}'s __init__.py differs from the one this adjustment was written for")
    init.write_text(text.replace(old, ""))
    return dest


def official(python: Path, checkout: Path, items: list[dict], method: str, work: Path, extra: dict) -> tuple:
    """(rows, masks) of the reference code's run ``method`` ("pixel" or "learned")."""
    import numpy as np

    out = work / PEER.name / f"official-{method}.json"
    env = {"TORCH_HOME": str(work / PEER.name / "torch-home"), "HF_HOME": str(work / PEER.name / "hf-home")}
    rows = run_process(python, DRIVERS / "pnp_metrics_official.py",
                       {"items": items, "metrics": list(METRICS if method == "pixel" else LEARNED), "method": method,
                        **extra}, out, env_extra=env, python_path=[checkout, torchvision_code(python, work)])["rows"]
    return rows, np.load(out.with_suffix(".npz"))


def _images(item):
    import numpy as np
    import torch
    from PIL import Image

    return [torch.from_numpy(np.array(Image.open(item[k]).convert("RGB"))).permute(2, 0, 1)[None].float() / 255
            for k in ("src", "tgt")]


def _parts(metric: str, fn, a, b, m) -> dict:
    """``metric`` over the whole pair, its unedited part (PIE-Bench's ``image * (1 - mask)``) and its
    edited part (``image * mask``), the parts only where they are not empty (the reference: "nan")."""
    from locedit.metrics import pie_masked

    row = {metric: fn(a, b)}
    if (1 - m).sum():
        row[f"{metric}_unedit_part"] = fn(pie_masked(a, m), pie_masked(b, m))
    if m.sum():
        row[f"{metric}_edit_part"] = fn(a * m, b * m)
    return row


def locedit_side(items: list[dict]) -> list[dict]:
    """locedit's decode and pixel metrics, as ``locedit bench`` computes them (``bg_*``: the unedited part)."""
    import numpy as np
    import torch

    from locedit.bench import decode_pie_mask
    from locedit.metrics import mse, psnr, ssim

    out = []
    for it in items:
        a, b = _images(it)
        m = decode_pie_mask(it["rle"], SIZE)
        mask = torch.from_numpy(m.astype(np.float32))[None, None]
        row = {"mask": m}
        for name, fn in (("psnr", psnr), ("mse", mse), ("ssim", ssim)):
            row.update(_parts(name, lambda x, y: float(fn(x, y)[0]), a, b, mask))
        out.append(row)
    return out


def dino_to_vit(state: dict, model) -> dict:
    """DINO's ViT checkpoint in ``model``'s (a ``transformers`` ``ViTModel``) names, as the hub's
    ``facebook/dino-vitb8`` was converted (``convert_dino_to_pytorch.py``: qkv split in thirds)."""
    v5 = "layers.0.attention.q_proj.weight" in model.state_dict()
    d = state["cls_token"].shape[-1]
    out = {"embeddings.cls_token": state["cls_token"], "embeddings.position_embeddings": state["pos_embed"],
           "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "layernorm.weight": state["norm.weight"], "layernorm.bias": state["norm.bias"]}
    names = (("q_proj", "k_proj", "v_proj", "o_proj", "mlp.fc1", "mlp.fc2") if v5 else
             ("attention.query", "attention.key", "attention.value", "output.dense", "intermediate.dense",
              "output.dense"))
    for i in range(len([k for k in state if k.endswith(".attn.qkv.weight")])):
        b, to = f"blocks.{i}.", (f"layers.{i}." if v5 else f"encoder.layer.{i}.")
        att = to + "attention."
        for t in ("weight", "bias"):
            qkv = state[b + f"attn.qkv.{t}"]
            for k, name in enumerate(names[:3]):
                out[att + f"{name}.{t}"] = qkv[k * d:(k + 1) * d]
            out[(att + "o_proj." if v5 else att + "output.dense.") + t] = state[b + f"attn.proj.{t}"]
            out[to + f"layernorm_before.{t}"] = state[b + f"norm1.{t}"]
            out[to + f"layernorm_after.{t}"] = state[b + f"norm2.{t}"]
            out[to + f"{names[4]}.{t}"] = state[b + f"mlp.fc1.{t}"]
            out[to + f"{names[5]}.{t}"] = state[b + f"mlp.fc2.{t}"]
    return out


def learned_networks(work: Path, python: Path, dino_eps: float):
    """locedit's LPIPS (SqueezeNet), DINO ViT and CLIP on the files the reference side loaded."""
    import torch
    from transformers import ViTConfig, ViTModel

    from locedit.metrics.learned import LPIPS, load_clip, lpips_state_dict

    ckpt = work / PEER.name / "torch-home" / "hub" / "checkpoints"
    heads = next(python.parent.parent.glob("lib/python*/site-packages/torchmetrics/functional/image/"
                                           "lpips_models/squeeze.pth"))
    lpips = LPIPS("squeeze")
    state = lpips_state_dict(torch.load(ckpt / "squeezenet1_1-b8a52dc0.pth", map_location="cpu", weights_only=True),
                             torch.load(heads, map_location="cpu", weights_only=True))
    missing, unexpected = lpips.load_state_dict(state, strict=False)  # shift / scale: buffers set in code
    if unexpected or set(missing) - {"shift", "scale"}:
        raise PeerError(f"the LPIPS files do not fit locedit's LPIPS: missing {missing}, unexpected {unexpected}")
    dino = ViTModel(ViTConfig(patch_size=8, qkv_bias=True, layer_norm_eps=dino_eps), add_pooling_layer=False)
    dino.load_state_dict(dino_to_vit(torch.load(ckpt / "dino_vitbase8_pretrain.pth", map_location="cpu",
                                                weights_only=True), dino))
    snapshots = work / PEER.name / "hf-home" / "hub" / "models--openai--clip-vit-large-patch14" / "snapshots"
    return lpips.eval(), dino.eval(), load_clip(str(next(snapshots.iterdir())))


def locedit_learned(items: list[dict], networks) -> list[dict]:
    """LPIPS, the DINO structure distance and the CLIP scores as ``locedit bench`` computes them
    (:class:`locedit.bench.runner.LearnedMetrics`: lpips_squeeze is the unedited part, clip_whole the
    target image, clip_edited its edited part), every part of each computed alike."""
    import numpy as np
    import torch

    from locedit.bench import decode_pie_mask
    from locedit.metrics.learned import clip_score, dino_structure_distance

    lpips, dino, (clip, tok) = networks
    out = []
    for it in items:
        a, b = _images(it)
        mask = torch.from_numpy(decode_pie_mask(it["rle"], SIZE).astype(np.float32))[None, None]
        row = _parts("lpips", lambda x, y: float(lpips(x, y)[0]), a, b, mask)
        row.update(_parts("structure_distance", lambda x, y: float(dino_structure_distance(dino, x, y)[0]), a, b, mask))
        row["clip_similarity_source_image"] = float(clip_score(clip, tok, a, [it["source_prompt"]])[0])
        row["clip_similarity_target_image"] = float(clip_score(clip, tok, b, [it["target_prompt"]])[0])
        if mask.sum():
            row["clip_similarity_target_image_edit_part"] = float(clip_score(clip, tok, b, [it["target_prompt"]],
                                                                             mask=mask)[0])
        out.append(row)
    return out


def differences(theirs: list[dict], ours: list[dict], metrics) -> dict:
    """Largest |reference - locedit| per metric; a "nan" of the reference must be absent on ours."""
    diffs: dict[str, float] = {}
    for k, (o, l) in enumerate(zip(theirs, ours)):
        for metric in metrics:
            if o[metric] == "nan":
                if metric in l:
                    raise PeerError(f"pair {k}: the reference has no {metric} (nan), locedit computed one")
                continue
            diffs[metric] = max(diffs.get(metric, 0.0), abs(float(o[metric]) - l[metric]))
    return diffs


def vocabulary(items: list[dict], work: Path) -> dict:
    """vocab.json / merges.txt of a CLIP BPE spelling each prompt word as one token (the random CLIP's)."""
    from locedit.diffusion.tiny import word_vocab

    vocab, merges = word_vocab({w for it in items for k in ("source_prompt", "target_prompt")
                                for w in it[k].split()})
    folder = work / PEER.name / "tokenizer"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    return {"vocab": str(folder / "vocab.json"), "merges": str(folder / "merges.txt")}


def run(args) -> dict:
    import numpy as np

    work = Path(args.work).expanduser()
    checkout = Path(args.checkout).expanduser().resolve()
    if not (checkout / "evaluation" / "matrics_calculator.py").is_file():
        raise PeerError(f"{checkout} has no evaluation/matrics_calculator.py (clone {PEER.repository})")
    dino = Path(args.dino).expanduser().resolve() if args.dino else None
    if not args.pixel_only and not (dino and (dino / "hubconf.py").is_file()):
        raise PeerError("the learned metrics need --dino: a clone of https://github.com/facebookresearch/dino "
                        "(or pass --pixel-only)")
    python = build_env(PEER, work)
    items = make_items(work / PEER.name / "inputs", args.n)
    theirs, masks = official(python, checkout, items, "pixel", work, {})
    ours = locedit_side(items)
    diffs = {"mask": max(float(np.abs(masks[f"mask{k}"] - l["mask"]).max()) for k, l in enumerate(ours))}
    diffs.update(differences(theirs, ours, METRICS))
    result = {"commit": checkout_commit(checkout), "n": args.n, "max_abs_diff": diffs, "official_first": theirs[0],
              "environment": [*PEER.requirements, *(r for r, _ in PEER.adjustments), TORCHVISION + " (Python code)"]}
    if not args.pixel_only:
        extra = {"seed": 0, "dino_checkout": str(dino), **vocabulary(items, work)}
        theirs, _ = official(python, checkout, items, "learned", work, extra)
        ours = locedit_learned(items, learned_networks(work, python, args.dino_eps))
        diffs.update(differences(theirs, ours, LEARNED))
        result.update(dino_commit=checkout_commit(dino), dino_eps=args.dino_eps, official_learned_first=theirs[0],
                      learned_scale={m: max(abs(float(r[m])) for r in theirs if r[m] != "nan") for m in LEARNED})
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkout", required=True, help="your clone of cure-lab/PnPInversion")
    p.add_argument("--work", default=str(DEFAULT_WORK))
    p.add_argument("--dino", default="", help="your clone of facebookresearch/dino (the learned metrics)")
    p.add_argument("--n", type=int, default=6, help="image pairs (the last with an empty mask)")
    p.add_argument("--pixel-only", action="store_true", help="PSNR, MSE and SSIM only (no DINO clone needed)")
    p.add_argument("--dino-eps", type=float, default=1e-12,
                   help="LayerNorm eps of locedit's ViT (1e-12: the hub's facebook/dino-vitb8; DINO's own: 1e-6)")
    p.add_argument("--json", default="")
    args = p.parse_args(argv)
    try:
        result = run(args)
    except PeerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"PnPInversion evaluation @ {result['commit'][:10]}, {args.n} pairs at {SIZE} px: largest |difference|")
    print("| metric | max abs diff |\n|---|---:|")
    for k, v in result["max_abs_diff"].items():
        print(f"| {k} | {v:.2e} |")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
