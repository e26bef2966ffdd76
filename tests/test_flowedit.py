"""FlowEdit (issue 33, item 4) on tiny random SD3 and FLUX models: the defining property computed
from Alg. 1, the families' defaults, and the loop's arithmetic written out for one step."""

import pytest
import torch
from flow_models import tiny_flux, tiny_sd3

from locedit.diffusion import flow
from locedit.diffusion.flow_model import from_flow_pipeline
from locedit.errors import LoceditError
from locedit.flow import FlowEditOptions
from locedit.flow.flowedit import flowedit

SRC = "a red circle on a gray background"
TGT = "a green circle on a gray background"


@pytest.fixture(scope="module", params=["sd3", "flux"])
def bundle(request):
    return from_flow_pipeline(tiny_sd3(0) if request.param == "sd3" else tiny_flux(0), name=request.param)


def _x(bundle):
    torch.manual_seed(1)
    return torch.randn(1, bundle.latent_channels, 4, 4)


def test_identical_prompts_and_scales_return_the_source_exactly(bundle):
    """V_delta = V(Z_FE + Z_src - X_src, c, s) - V(Z_src, c, s) = 0 at every step: the ODE never
    moves (up to the rounding of X_src + Z_src - X_src, which is not Z_src in floating point)."""
    x = _x(bundle)
    same = FlowEditOptions(steps=6, n_max=4, src_guidance=2.0, tar_guidance=2.0)
    still = (flowedit(bundle, x, SRC, SRC, same) - x).abs().max().item()
    moved = (flowedit(bundle, x, SRC, TGT, same) - x).abs().max().item()
    assert still < 1e-5 and moved > 1000 * max(still, 1e-8), (still, moved)


def test_one_step_is_alg_1_written_out(bundle):
    """n_max = 1 of T: one step from the last level t_{T-1} to 0 with one noise draw."""
    x = _x(bundle)
    o = FlowEditOptions(steps=5, n_max=1, src_guidance=1.5, tar_guidance=4.0)
    out = flowedit(bundle, x, SRC, TGT, o, seed=3)
    sigmas = bundle.sigmas(5, 4, 4)
    t = (flow.timesteps(sigmas, bundle.scheduler_config)[-1] / 1000).item() if bundle.family == "sd3" \
        else sigmas[-2].item()
    gen = torch.Generator().manual_seed(3)
    shape = x.shape
    n = (flow.unpack(torch.randn((1, 4, 4 * shape[1]), generator=gen), 4, 4) if bundle.family == "flux"
         else torch.randn(shape, generator=gen))
    z_src = (1 - t) * x + t * n  # Z_tar = Z_FE + Z_src - X_src = Z_src at the first step

    def v(prompt, scale):
        if bundle.family == "flux":
            return bundle.velocity(z_src, t, bundle.encode_text([prompt]), scale)
        u, c = bundle.velocity(torch.cat([z_src, z_src]), t, _rows(bundle, ["", prompt])).chunk(2)
        return u + scale * (c - u)

    expected = x + (0.0 - t) * (v(TGT, 4.0) - v(SRC, 1.5))
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)


def _rows(bundle, prompts):
    from locedit.flow.flowedit import flow_text_rows

    return flow_text_rows([bundle.encode_text([p]) for p in prompts])


def test_defaults_are_the_papers_per_family_and_bad_counts_are_refused(bundle):
    o = FlowEditOptions().resolved(bundle.family)
    expected = {"sd3": (50, 33, 3.5, 13.5), "flux": (28, 24, 1.5, 5.5)}[bundle.family]
    assert (o.steps, o.n_max, o.src_guidance, o.tar_guidance) == expected and (o.n_min, o.n_avg) == (0, 1)
    with pytest.raises(LoceditError, match="n_min <= n_max <= steps"):
        FlowEditOptions(steps=10, n_max=12).resolved(bundle.family)
    with pytest.raises(LoceditError, match="n_avg >= 1"):
        FlowEditOptions(n_avg=0)


def test_the_last_n_min_steps_sample_the_target(bundle):
    """n_min > 0 switches to plain target sampling: the result differs from n_min = 0, and with
    n_min = n_max every step samples (the edit ODE never runs) from the noised source."""
    x = _x(bundle)
    a = flowedit(bundle, x, SRC, TGT, FlowEditOptions(steps=6, n_max=4, n_min=0))
    b = flowedit(bundle, x, SRC, TGT, FlowEditOptions(steps=6, n_max=4, n_min=2))
    assert (a - b).abs().max() > 1e-5


def test_a_mask_keeps_the_outside_on_the_source(bundle):
    """locedit's localisation: outside the mask the result is the source latent (to rounding), inside
    it is the unmasked edit's first step onwards moved (not the source)."""
    x = _x(bundle)
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :2] = 1
    for n_min in (0, 2):
        out = flowedit(bundle, x, SRC, TGT, FlowEditOptions(steps=6, n_max=4, n_min=n_min), mask=mask)
        outside = mask.expand_as(x) == 0
        assert (out - x)[outside].abs().max() < 1e-5, n_min
        assert (out - x)[~outside].abs().max() > 1e-3, n_min


@pytest.mark.parametrize("which", ["sd3", "flux"])
def test_the_flowedit_command(which, tmp_path, capsys):
    """``locedit flowedit`` on a saved tiny model: the PNG at the input's size with its settings; --mask
    reaches the edit (the result differs from the unmasked one; that the latents outside stay the
    source's is tested above - the random VAE's attention spreads any latent change over the decoded
    image, so its pixels are not compared by region); a UNet model is refused in one line."""
    import json

    import numpy as np
    from PIL import Image

    from locedit.cli import main

    pipe = tiny_sd3(0) if which == "sd3" else tiny_flux(0)
    pipe.save_pretrained(tmp_path / "m", safe_serialization=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    mask = np.zeros((24, 40), np.uint8)
    mask[:, :16] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    base = ["flowedit", str(tmp_path / "img.png"), "--model", str(tmp_path / "m"), "--source", SRC, "--target", TGT,
            "--steps", "4", "--n-max", "3", "--src-guidance", "1.0", "--tar-guidance", "6.0", "--quiet"]
    assert main(base + ["--out", str(tmp_path / "free.png")]) == 0
    assert main(base + ["--mask", str(tmp_path / "mask.png"), "--out", str(tmp_path / "masked.png")]) == 0
    free, masked = (np.asarray(Image.open(tmp_path / f"{n}.png").convert("RGB")).astype(float) for n in ("free", "masked"))
    assert free.shape == masked.shape == (24, 40, 3)
    meta = Image.open(tmp_path / "masked.png").text
    assert json.loads(meta["locedit:options"])["n_max"] == 3 and meta["locedit:method"] == "flowedit"
    assert not np.array_equal(masked, free)
    capsys.readouterr()
    assert main(["flowedit", str(tmp_path / "img.png"), "--model", "tiny-random", "--source", SRC, "--target", TGT,
                 "--out", str(tmp_path / "no.png"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "flowedit runs on FLUX and SD3 models" in err[0] and not (tmp_path / "no.png").exists()
