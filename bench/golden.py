"""Golden outputs of the engine: every method x inversion, and every instruct method, on the bundled
shapes models and on tiny random SD 1.x / 2.x / SDXL models, two steps each, with UNet call counts.

Recorded once before a redesign (issue 30) and compared after it: ``tests/test_golden.py`` runs the
same matrix and asks for the same call counts and bitwise-equal latents and images (or the stated
tolerance where a case's operation order legitimately changes).

    python bench/golden.py            # rewrites tests/golden/engine.{json,safetensors}

The recording is the library's own public entry points (``pipeline.invert``, ``pipeline.edit``,
``instruct_edit``), so it survives any reshaping of what lies under them.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "golden"
STEPS = 2


def _box(y0, y1, x0, x1, side=64):
    m = torch.zeros(1, 1, side, side)
    m[..., y0:y1, x0:x1] = 1
    return m


def _square_image():
    x = torch.full((1, 3, 64, 64), 0.5)
    x[:, :, 16:40, 20:44] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    return x


def _shapes_image():
    from PIL import Image

    a = np.asarray(Image.open(ROOT / "examples" / "shapes-scene.png").convert("RGB"))
    return torch.from_numpy(a.copy()).permute(2, 0, 1)[None].float() / 255


# the scene each model edits: (image, source, target, object word, target colour word, object box, other box)
TINY_SCENE = dict(src="a red square on the gray background", tgt="a blue square on the gray background",
                  obj="square", colour="blue", box=(16, 40, 20, 44), other=(40, 60, 4, 28))
SHAPES_SCENE = dict(src="a red circle and a blue striped square on a gray background",
                    tgt="a green circle and a blue striped square on a gray background",
                    obj="circle", colour="green", box=(20, 44, 8, 31), other=(20, 44, 34, 58))


def models():
    """name -> (bundle loader, scene, image loader)."""
    from locedit.diffusion import load_model
    from locedit.diffusion.model import finish_bundle
    from locedit.diffusion.tiny import tiny_bundle, tiny_sd2_components, tiny_sdxl_bundle

    def sd2():
        unet, vae, te, tok, cfg = tiny_sd2_components(seed=0)
        return finish_bundle(unet, vae, te, tok, cfg, "tiny-sd2", torch.device("cpu"), torch.float32)

    return {
        "shapes": (lambda: load_model("shapes"), SHAPES_SCENE, _shapes_image),
        "tiny-sd1": (lambda: tiny_bundle(seed=0), TINY_SCENE, _square_image),
        "tiny-sd2": (sd2, TINY_SCENE, _square_image),
        "tiny-sdxl": (lambda: tiny_sdxl_bundle(seed=0), TINY_SCENE, _square_image),
    }


def inversion_options():
    from locedit.inversion import AIDIOptions, NMGOptions, NullTextOptions, SPDOptions

    return {"null-text": NullTextOptions(inner_steps=2), "spd": SPDOptions(max_steps=2), "aidi": AIDIOptions(rounds=2),
            "nmg": NMGOptions(grad_scale=1.0)}


def method_inputs(scene):
    """The inputs and options that make each registry method act within two steps."""
    from locedit.guidance import GuidanceOptions, LocInvOptions
    from locedit.inversion import NullTextOptions
    from locedit.masks import Region
    from locedit.methods import (BlendedOptions, DiffEditOptions, LocInvEditOptions, MAGEditOptions, MasaCtrlOptions,
                                 MDEEditOptions, PnPOptions)

    box, other = _box(*scene["box"]), _box(*scene["other"])
    GUIDE = GuidanceOptions(guided_steps=2, iterations=2, step_size=2.5, sigma_scaling=True)
    return {
        "p2p": {"blend_words": (scene["obj"], scene["obj"])},
        "mag-edit": {"regions": (Region(scene["colour"], box),), "options": MAGEditOptions(guidance=GUIDE)},
        "mde-edit": {"regions": (Region(scene["obj"], box),), "attributes": (Region(scene["colour"], other),),
                     "options": MDEEditOptions(guidance=GUIDE)},
        "locinv": {"regions": (Region(scene["obj"], box),),
                   "options": LocInvEditOptions(locinv=LocInvOptions(max_inner=2, nti=NullTextOptions(inner_steps=2)))},
        "masactrl": {"options": MasaCtrlOptions(start_step=0, start_layer=0)},
        "pnp": {"options": PnPOptions(negative_prompt="")},
        "blended": {"options": BlendedOptions(start=0.0, noise="inversion"), "mask": box},
        "diffedit": {"options": DiffEditOptions(encode_ratio=1.0, noises=2, clamp_ratio=1.5)},
        "sdedit": {},
    }


def _sha(x: torch.Tensor) -> str:
    return hashlib.sha256(x.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()[:16]


def record_model(name: str, progress=print):
    """(facts, tensors) of one model: facts are call counts and hashes, tensors the latents."""
    from locedit import pipeline
    from locedit.inversion import INVERSIONS
    from locedit.methods import METHODS

    load, scene, load_image = models()[name]
    bundle, image = load(), load_image()
    facts, tensors = {}, {}
    fast = inversion_options()
    trajs = {}
    for inv in INVERSIONS:
        traj = pipeline.invert(bundle, image, scene["src"], inv, num_steps=STEPS, options=fast.get(inv))
        trajs[inv] = traj
        key = f"{name}/invert/{inv}"
        z = torch.stack([traj.latents[i] for i in range(len(traj.latents))])
        facts[key] = {"unet_calls": traj.stats["unet_calls"], "latents": _sha(z)}
        tensors[key] = z.float().contiguous()
        progress(key, facts[key])
    inputs = method_inputs(scene)
    for method, m in METHODS.items():
        kwargs = inputs[method]
        takes = m.takes_inversion(kwargs.get("options", m.Options()))
        for inv in (INVERSIONS if takes else [None]):
            key = f"{name}/edit/{method}/{inv or 'own'}"
            res = pipeline.edit(bundle, None if takes else image, scene["src"], scene["tgt"], method=method,
                                trajectory=trajs[inv] if takes else None, num_steps=STEPS, **kwargs)
            facts[key] = {"inversion_unet_calls": res.stats["inversion_unet_calls"],
                          "edit_unet_calls": res.stats["edit_unet_calls"],
                          "latents": _sha(res.sample.latents), "edited": _sha(res.edited)}
            tensors[key] = res.sample.latents.float().contiguous()
            progress(key, facts[key])
    return facts, tensors


def record_instruct(name: str, progress=print):
    """IP2P and LIME on the bundled instruct model and a tiny random instruct model."""
    from locedit.instruct.methods import INSTRUCT_METHODS
    from locedit.instruct.options import LIMEOptions

    if name == "shapes-instruct":
        from locedit.diffusion import load_model

        bundle, image, instruction = load_model("shapes-instruct"), _shapes_image(), "make the circle green"
    else:
        from diffusers import UNet2DConditionModel

        from locedit.diffusion.model import finish_bundle
        from locedit.diffusion.tiny import tiny_components

        unet, vae, te, tok, cfg = tiny_components(seed=1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            unet8 = UNet2DConditionModel.from_config({**unet.config, "in_channels": 8})
        bundle = finish_bundle(unet8, vae, te, tok, cfg, "tiny-instruct", torch.device("cpu"), torch.float32)
        image, instruction = _square_image(), "make the square blue"
    facts, tensors = {}, {}
    for method, m in INSTRUCT_METHODS.items():
        opts = LIMEOptions(points=10, clusters=4) if method == "lime" else m.Options()
        key = f"{name}/instruct/{method}"
        calls = bundle.unet_calls
        res = m.run(bundle, image, instruction, STEPS, opts, 0)
        facts[key] = {"unet_calls": bundle.unet_calls - calls, "latents": _sha(res.latents),
                      "roi": None if res.roi is None else _sha(res.roi.float())}
        tensors[key] = res.latents.float().contiguous()
        progress(key, facts[key])
    return facts, tensors


MODELS = ("shapes", "tiny-sd1", "tiny-sd2", "tiny-sdxl")
INSTRUCT_MODELS = ("shapes-instruct", "tiny-instruct")


def record_all(progress=print):
    facts, tensors = {}, {}
    for name in MODELS:
        f, t = record_model(name, progress)
        facts.update(f), tensors.update(t)
    for name in INSTRUCT_MODELS:
        f, t = record_instruct(name, progress)
        facts.update(f), tensors.update(t)
    return facts, tensors


def rerecord(keys: list[str]) -> None:
    """Record ``keys`` again and keep every other case as it was: for a change that alters a case on
    purpose (a conformance fix), named with its reason in tests/golden/README.md."""
    from safetensors.torch import load_file, save_file

    torch.set_num_threads(1)  # as the test compares
    facts = json.loads((GOLDEN / "engine.json").read_text())
    tensors = load_file(str(GOLDEN / "engine.safetensors"))
    for name in sorted({k.split("/")[0] for k in keys}):
        record = record_instruct if name in INSTRUCT_MODELS else record_model
        f, t = record(name, lambda k, v: print(k, v, file=sys.stderr, flush=True))
        for k in keys:
            if k.startswith(name + "/"):
                facts[k], tensors[k] = f[k], t[k]
    (GOLDEN / "engine.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    save_file(tensors, str(GOLDEN / "engine.safetensors"))
    print(f"recorded {len(keys)} cases again in {GOLDEN}", file=sys.stderr)


def main() -> None:
    from safetensors.torch import save_file

    if sys.argv[1:2] == ["--only"]:  # python bench/golden.py --only CASE [CASE ...]
        rerecord(sys.argv[2:])
        return
    torch.set_num_threads(max(1, torch.get_num_threads()))
    facts, tensors = record_all(lambda k, v: print(k, v, file=sys.stderr, flush=True))
    GOLDEN.mkdir(parents=True, exist_ok=True)
    (GOLDEN / "engine.json").write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
    save_file(tensors, str(GOLDEN / "engine.safetensors"))
    # bitwise equality holds on the same CPU kernels only (tests/test_golden.py)
    machine = {"cpu_capability": torch.backends.cpu.get_cpu_capability()}
    (GOLDEN / "machine.json").write_text(json.dumps(machine) + "\n")
    print(f"wrote {len(facts)} cases to {GOLDEN}", file=sys.stderr)


if __name__ == "__main__":
    main()
