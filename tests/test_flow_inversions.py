"""Issue 33, items 3 and 6: the flow inversions' registry (``locedit.flow.inversions``), their runs
(``locedit.flow.invert``), :func:`locedit.api.flow_invert` and ``locedit invert`` on a flow model, on tiny
random FLUX and SD3 models. Each property is computed from the solver's rule."""

import json

import pytest
import torch
from flow_models import tiny_flux, tiny_sd3

from locedit.diffusion.flow_model import from_flow_pipeline
from locedit.errors import LoceditError
from locedit.flow.inversions import FLOW_INVERSIONS
from locedit.flow.invert import invert, reconstruct
from locedit.flow.options import RFInvertOptions, UniInvOptions

PROMPT = "a red circle on a gray background"


@pytest.fixture(scope="module")
def flux():
    return from_flow_pipeline(tiny_flux(0), name="tiny-flux")


@pytest.fixture(scope="module")
def sd3():
    return from_flow_pipeline(tiny_sd3(0), name="tiny-sd3")


def _x(bundle, seed=1):
    return torch.randn(1, bundle.latent_channels, 8, 8, generator=torch.Generator().manual_seed(seed))


def _error(bundle, x, name, steps):
    back, _ = reconstruct(bundle, invert(bundle, x, PROMPT, name, steps))
    return float((back - x).abs().max())


@pytest.mark.parametrize("name, order", [("euler", 1), ("uni-inv", 1), ("rf-solver", 2), ("fireflow", 2)])
def test_inversion_then_sampling_reconstructs_to_the_solvers_order(flux, name, order):
    """Inverted and sampled back on the same prompt at guidance 1, the latent returns up to the solver's
    error: four times the steps cut it about 4x for the first-order steps (Euler, Uni-Inv's
    predictor-corrector) and about 16x for the second-order ones (RF-Solver's Taylor step, FireFlow's
    midpoint)."""
    x = _x(flux)
    ratio = _error(flux, x, name, 8) / _error(flux, x, name, 32)
    assert (2.5 < ratio < 6) if order == 1 else ratio > 9, ratio


@pytest.mark.parametrize("name", list(FLOW_INVERSIONS))
def test_model_calls_follow_each_rule(flux, name):
    """Per inversion of N steps: Euler N, RF-Solver 2N (a half step each), FireFlow and Uni-Inv N + 1
    (the first step's velocity is the model's, later ones reuse the previous step's), RF-Inversion N;
    the reconstruction walks down with the same solver (RF-Inversion: Euler)."""
    n = 5
    want = {"euler": n, "rf-solver": 2 * n, "fireflow": n + 1, "uni-inv": n + 1, "rf-inversion": n}[name]
    inv = invert(flux, _x(flux), PROMPT, name, n)
    _, calls = reconstruct(flux, inv)
    assert (inv.calls, calls) == (want, want)
    zero = invert(flux, _x(flux), PROMPT, "uni-inv", n, UniInvOptions(zero_init=True))
    assert zero.calls == n  # the first predictor velocity is zero, not a call


def test_prompt_guidance_and_seed_reach_the_velocity(flux, sd3):
    x = _x(flux)
    base = invert(flux, x, PROMPT, "euler", 4).noise
    assert not torch.equal(base, invert(flux, x, "a blue square", "euler", 4).noise)
    from locedit.flow.options import FlowInversionOptions

    empty = invert(flux, x, PROMPT, "euler", 4, FlowInversionOptions(prompt="empty")).noise
    torch.testing.assert_close(empty, invert(flux, x, "", "euler", 4).noise, rtol=0, atol=0)
    assert not torch.equal(base, invert(flux, x, PROMPT, "euler", 4, FlowInversionOptions(guidance=4.0)).noise)
    # SD3: guidance above 1 is classifier-free against the empty prompt, one batched call a step
    y = _x(sd3)
    cfg = invert(sd3, y, PROMPT, "euler", 3, FlowInversionOptions(guidance=3.0))
    assert cfg.calls == 3 and not torch.equal(cfg.noise, invert(sd3, y, PROMPT, "euler", 3).noise)
    # RF-Inversion pulls towards one noise draw: the seed decides it
    a, b = (invert(flux, x, PROMPT, "rf-inversion", 4, RFInvertOptions(gamma=0.9), seed=s).noise for s in (0, 1))
    assert not torch.equal(a, b)
    torch.testing.assert_close(a, invert(flux, x, PROMPT, "rf-inversion", 4, RFInvertOptions(gamma=0.9), seed=0).noise)


def test_families_and_options_are_checked(sd3, flux):
    calls = sd3.unet_calls, flux.unet_calls
    with pytest.raises(LoceditError, match="--inversion rf-inversion runs on flux models; 'tiny-sd3' is a sd3 model"):
        invert(sd3, _x(sd3), PROMPT, "rf-inversion", 2)
    with pytest.raises(LoceditError, match="takes RFInvertOptions, not UniInvOptions"):
        invert(flux, _x(flux), PROMPT, "rf-inversion", 2, UniInvOptions())
    with pytest.raises(LoceditError, match="unknown flow inversion 'ddim'"):
        invert(flux, _x(flux), PROMPT, "ddim", 2)
    assert (sd3.unet_calls, flux.unet_calls) == calls  # refused before any model call


def test_locedit_invert_on_a_flow_model(flux, scene_png, tmp_path, capsys):
    from PIL import Image

    from locedit.cli import main

    folder = tmp_path / "flux"
    flux.pipe.save_pretrained(folder, safe_serialization=True)
    out = tmp_path / "inv"
    code = main(["invert", scene_png[0], "--model", str(folder), "--source", PROMPT, "--inversion", "rf-solver",
                 "--steps", "3", "--guidance", "2", "--out-dir", str(out), "--quiet", "--json"])
    assert code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert (manifest["inversion_calls"], manifest["reconstruction_calls"]) == (6, 6)
    assert manifest["options"]["guidance"] == 2.0 and manifest["psnr"] > 0 and manifest["vae_psnr"] > 0
    assert Image.open(out / "reconstruction.png").size == Image.open(scene_png[0]).size  # back at the input's size
    from safetensors.torch import load_file

    assert load_file(str(out / "noise.safetensors"))["noise"].shape[1] == flux.latent_channels
    capsys.readouterr()
    bad = [(["--inversion", "euler", "--gamma", "0.3"], "--gamma is not used by --inversion euler"),
           (["--inversion", "ddim"], "invert it with --inversion euler|rf-solver|fireflow|uni-inv|rf-inversion"),
           (["--inversion", "euler", "--preset", "paper"], "has one reading"),
           (["--inversion", "spd", "--spd-steps", "2"], "is a flux model")]
    for args, message in bad:
        code = main(["invert", scene_png[0], "--model", str(folder), "--source", PROMPT, "--steps", "2",
                     "--out-dir", str(tmp_path / "no"), "--quiet", *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0], (args, err)
        assert not (tmp_path / "no").exists()


def test_a_flow_inversion_on_a_unet_model_is_refused_in_one_line(model_dir, scene_png, tmp_path, capsys):
    from locedit.cli import main

    code = main(["invert", scene_png[0], "--model", str(model_dir), "--source", "a red square", "--inversion",
                 "fireflow", "--out-dir", str(tmp_path / "no"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--inversion fireflow runs on FLUX and SD3 models" in err[0]
    assert not (tmp_path / "no").exists()


def test_flow_invert_takes_the_inversions_own_prompt_default(flux):
    """Uni-Inv and RF-Inversion invert on the empty prompt by default: no source prompt is needed for
    them, while one that inverts on the source refuses an empty one, before any call."""
    from locedit.api import flow_invert

    image = torch.rand(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    r = flow_invert(image, "", model="tiny-flux", inversion="uni-inv", steps=2, bundle=flux)
    assert r.inverted.prompt == "" and r.model_calls == (3, 3) and r.reconstruction.shape == image.shape
    calls = flux.unet_calls
    with pytest.raises(LoceditError, match="--source is empty"):
        flow_invert(image, " ", model="tiny-flux", inversion="euler", steps=2, bundle=flux)
    assert flux.unet_calls == calls
