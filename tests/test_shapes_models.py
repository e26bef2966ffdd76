"""The shapes models' code paths (gates, IP2P loop) on tiny random stand-ins, and the bundled
models themselves when they are installed."""

import random
from pathlib import Path

import pytest
import torch

from locedit.diffusion import load_model
from locedit.diffusion.loading import BUNDLED_DIR
from locedit.errors import LoceditError
from locedit.instruct import instruct_edit
from locedit.world import gates as G
from locedit.world.edits import sample_edit


@pytest.fixture(scope="module")
def tiny_instruct(instruct_bundle):
    return instruct_bundle


def test_gate_code_paths_run_on_tiny_models(bundle, tiny_instruct):
    v = G.gate_vae(bundle, n=2)
    assert v["n"] == 2 and v["vae_psnr"] < G.GATES["vae_psnr"]  # a random VAE cannot pass
    t = G.gate_t2i(bundle, n=2, steps=2, batch=2)
    assert 0.0 <= t["t2i_oracle"] <= 1.0
    r = G.gate_nti(bundle, n=1, steps=2)
    assert r["nti_psnr"] > 0
    i = G.gate_instruct(tiny_instruct, n=3, steps=2)
    assert set(i) >= {"instruct_oracle", "instruct_outside_psnr"}
    # the by-kind figures are the same edits split by kind: their weighted means are the totals
    rng = random.Random(G.HELD_OUT_SEED + 30_000)
    kinds = [sample_edit(rng).kind for _ in range(3)]
    assert {k.removeprefix("instruct_oracle_") for k in i if k.startswith("instruct_oracle_")} == set(kinds)
    for key in ("instruct_oracle", "instruct_outside_psnr"):
        assert sum(i[f"{key}_{k}"] for k in kinds) / 3 == pytest.approx(i[key])
    c = G.gate_p2p_colour(bundle, n=2, steps=2)
    s = G.gate_p2p_shape(bundle, n=2, steps=2)
    assert c["n"] == 2 and c["p2p_colour_outside_psnr"] < G.GATES["p2p_colour_outside_psnr"]  # random model
    # the mask blend keeps everything outside the object at the source's latents: far closer than the
    # attention blend of a random model
    assert s["p2p_shape_outside_psnr"] > c["p2p_colour_outside_psnr"]


def test_psnr_by_hand():
    a = torch.zeros(1, 3, 2, 2)
    b = torch.full((1, 3, 2, 2), 0.1)
    assert abs(G.psnr(a, b) - 20.0) < 1e-5
    mask = torch.tensor([[True, False], [False, False]])
    b[..., 1, 1] = 1.0
    assert abs(G.psnr(a, b, mask) - 20.0) < 1e-5


def test_ip2p_loop_is_seeded_and_refuses_text_to_image_models(bundle, tiny_instruct, image):
    a = instruct_edit(tiny_instruct, image, "make the square blue", 3, generator=torch.Generator().manual_seed(0))
    b = instruct_edit(tiny_instruct, image, "make the square blue", 3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (1, 4, 16, 16) and torch.equal(a, b)
    with pytest.raises(LoceditError, match="InstructPix2Pix"):
        instruct_edit(bundle, image, "make it blue", 2)


BUNDLED = pytest.mark.skipif(not all((BUNDLED_DIR / n).is_dir() for n in ("shapes", "shapes-instruct")),
                             reason="bundled shapes models not built yet")


@BUNDLED
def test_bundled_shapes_model_loads_offline_and_generates():
    from locedit import pipeline

    b = load_model("shapes")
    z = pipeline.generate(b, ["a red circle on a gray background"], num_steps=3, generator=torch.Generator().manual_seed(0))
    assert b.decode_latents(z).shape == (1, 3, 64, 64)


@BUNDLED
def test_bundled_models_fit_the_budget_and_the_instruct_model_edits():
    size = sum(p.stat().st_size for name in ("shapes", "shapes-instruct") for p in (BUNDLED_DIR / name).rglob("*")
               if p.is_file())
    assert size <= 40 * 2**20  # the UNet models' budget; shapes-flow's own (20 MB) is test_train_flow's
    from safetensors import safe_open

    for weights in BUNDLED_DIR.glob("shapes*/*/*.safetensors"):
        with safe_open(str(weights), "pt") as f:
            assert all(f.get_slice(k).get_dtype() == "F16" for k in f.keys()), weights
    b = load_model("shapes-instruct")
    assert b.unet.config.in_channels == 8
    image = torch.full((1, 3, 64, 64), 0.5)
    z = instruct_edit(b, image, "make the background black", 4, generator=torch.Generator().manual_seed(0))
    assert b.decode_latents(z).shape == (1, 3, 64, 64)


@BUNDLED
@pytest.mark.parametrize("blend", ["attention", "mask"])
def test_bundled_model_edit_lands_in_the_mask(blend):
    """The demo's edit (P2P word swap with the attention blend of "circle") and the same with the
    circle's mask as the blend: the red circle turns green inside its mask; the rest stays as it was."""
    from pathlib import Path

    from locedit import pipeline
    from locedit.cli import load_image, load_mask
    from locedit.control.p2p import P2POptions
    from locedit.methods import P2PEditOptions

    root = Path(__file__).resolve().parents[1] / "examples"
    x = load_image(str(root / "shapes-scene.png"))
    mask_image = load_mask(str(root / "shapes-circle-mask.png"))
    mask = mask_image[0, 0] > 0.5
    b = load_model("shapes")
    r = pipeline.edit(b, x, "a red circle and a blue striped square on a gray background",
                      "a green circle and a blue striped square on a gray background",
                      inversion="direct", options=P2PEditOptions(P2POptions(mode="replace")), num_steps=20,
                      **({"mask": mask_image} if blend == "mask" else {"blend_words": ("circle", "circle")}))
    out = r.edited[0].float().cpu()
    inside, outside = out[:, mask], out[:, ~mask]
    assert inside[1].mean() > inside[0].mean() + 0.2  # green now dominates where red was
    assert x[0, 0][mask].mean() > x[0, 1][mask].mean() + 0.2  # it was red
    assert G.psnr(out[None], x, ~mask) > 25.0


@BUNDLED
@pytest.mark.parametrize("preset_name", ["paper", "official"])
def test_both_presets_run_every_method_on_the_bundled_models(preset_name):
    """Every editing method and instruction method, under each preset, on the demo scene (3 steps).
    LIME's official preset drops verbs with NLTK's tagger, whose data cannot ship: it runs with that
    one option off, and the option alone is checked to fail with a one-line error when NLTK is absent."""
    from dataclasses import replace
    from pathlib import Path

    from locedit import pipeline
    from locedit.fileio import load_image, load_mask
    from locedit.instruct import INSTRUCT_METHODS
    from locedit.masks import Region
    from locedit.methods import METHODS
    from locedit.options import preset

    root = Path(__file__).resolve().parents[1] / "examples"
    x = load_image(root / "shapes-scene.png")
    circle = load_mask(root / "shapes-circle-mask.png")
    src = "a red circle and a blue striped square on a gray background"
    tgt = "a green circle and a blue striped square on a gray background"
    inputs = {"p2p": dict(blend_words=("circle", "circle")), "mag-edit": dict(regions=[Region("green", circle)]),
              "mde-edit": dict(regions=[Region("circle", circle)], attributes=[Region("green", circle)]),
              "locinv": dict(regions=[Region("circle", circle)]), "masactrl": dict(mask=circle),
              "blended": dict(mask=circle), "pnp": {}, "sdedit": {}, "diffedit": {}}
    overrides = {"masactrl": {"start_step": 1}}  # MasaCtrl's S = 4 is for 50 steps
    b = load_model("shapes")
    for name, m in METHODS.items():
        options = replace(preset(m.Options, preset_name), **overrides.get(name, {}))
        r = pipeline.edit(b, x, src, tgt, method=name, options=options, inversion="direct",
                          num_steps=3, **inputs[name])
        assert r.edited.shape == x.shape and torch.isfinite(r.edited).all(), name
    ib = load_model("shapes-instruct")
    for name, m in INSTRUCT_METHODS.items():
        options = preset(m.Options, preset_name)
        if getattr(options, "drop_verbs", False):
            try:
                import nltk  # noqa: F401
            except ImportError:
                options = replace(options, drop_verbs=False)
        res = m.run(ib, x, "make the circle green", 3, options, seed=0)
        assert torch.isfinite(res.latents).all(), name


@BUNDLED
def test_bundled_models_are_diffusers_pipeline_folders():
    """model_index.json: diffusers' own pipelines load the shipped folders and generate/edit with them."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline

    t2i = StableDiffusionPipeline.from_pretrained(BUNDLED_DIR / "shapes", torch_dtype=torch.float32)
    t2i.set_progress_bar_config(disable=True)
    image = t2i("a red circle on a gray background", num_inference_steps=4, height=64, width=64,
                generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all()
    ip2p = StableDiffusionInstructPix2PixPipeline.from_pretrained(BUNDLED_DIR / "shapes-instruct",
                                                                  torch_dtype=torch.float32)
    ip2p.set_progress_bar_config(disable=True)
    edited = ip2p("make the circle green", image=image, num_inference_steps=4,
                  generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert edited.shape == (1, 3, 64, 64) and not torch.equal(edited, image)


@BUNDLED
def test_bundled_models_do_what_their_gates_measure_on_a_small_sample():
    """A few held-out items of gates 2, 5/5b and 4 at 20 steps (the gates themselves are 50 steps on
    100-200 items, bench/shapes_gates.py). The first shipped models scored 0/8, 1/4 at 21.3 dB and
    2/8 at 15.1 dB here; the v2 models 8/8, 4/4 at 28.1 dB and 7/8 at 25.5 dB. The thresholds sit
    between, so a regression to blobs, a leaking blend or a recolouring instruct model fails."""
    t2i = load_model("shapes")
    assert G.gate_t2i(t2i, n=8, steps=20, batch=8)["t2i_oracle"] >= 0.75
    colour = G.gate_p2p_colour(t2i, n=4, steps=20)
    assert colour["p2p_colour_oracle"] >= 0.75 and colour["p2p_colour_outside_psnr"] > 25.0
    instruct = G.gate_instruct(load_model("shapes-instruct"), n=8, steps=20)
    assert instruct["instruct_oracle"] >= 0.625 and instruct["instruct_outside_psnr"] > 20.0


def _circle_scene():
    from locedit import load_image, load_mask

    root = Path(__file__).resolve().parents[1] / "examples"
    return load_image(str(root / "shapes-scene.png")), load_mask(str(root / "shapes-circle-mask.png"))


@BUNDLED
def test_lime_finds_the_instructed_object_of_the_bundled_scene():
    """Issue 32: LIME's region covered the background on the README's scene (the top 100 points were
    10% of the 32x32 fused pixels); at the paper's fraction of the image (2 points at 64 px) the RoI is
    the clusters of the circle the instruction names: all of it, and mostly it."""
    import torch.nn.functional as F

    from locedit.instruct.lime import localize
    from locedit.instruct.options import LIMEOptions

    x, circle = _circle_scene()
    ib = load_model("shapes-instruct")
    loc = localize(ib, x, "make the circle green", 50, LIMEOptions(), seed=0)
    side = loc.roi.shape[0]
    assert len(loc.top) == round(100 * 64 * 64 / 512 ** 2)  # the paper's 100 of 256x256, at 64 px
    inside = F.interpolate(circle, size=(side, side), mode="area")[0, 0] > 0.5
    covered = (loc.roi & inside).sum().item() / inside.sum().item()
    precision = (loc.roi & inside).sum().item() / loc.roi.sum().item()
    assert covered > 0.95 and precision > 0.5, (covered, precision)


@BUNDLED
def test_lime_on_shapes_instruct_edits_only_with_the_padding_related():
    """The bundled shapes-instruct reads the instruction from its padding positions: LIME's
    regularisation (the paper's and the code's: padding is unrelated) leaves the circle red inside its
    own mask, and ``padding_related`` (locedit's option) lets IP2P's edit through there."""
    from locedit.instruct.lime import lime_edit
    from locedit.instruct.options import LIMEOptions

    x, circle = _circle_scene()
    ib = load_model("shapes-instruct")
    inside = circle[0, 0] > 0.5

    def circle_rgb(options):
        z = lime_edit(ib, x, "make the circle green", 30, options, seed=0, mask=circle).latents
        return ib.decode_latents(z)[0][:, inside].mean(dim=1)

    faithful, let_through = circle_rgb(LIMEOptions()), circle_rgb(LIMEOptions(padding_related=True))
    assert faithful[0] > 0.6 and faithful[1] < 0.3, faithful  # still red
    assert let_through[1] > 0.5 and let_through[0] < 0.3, let_through  # green
