"""SDXL and SD 2.x (issue 18): tiny random models of each family, saved to a folder and loaded
through the real loader, run every inversion and every method; the SDXL text and UNet
conditioning match diffusers' own SDXL pipeline."""

import json

import pytest
import torch
from conftest import SRC, TGT, fast_inversion_options, square_box

from locedit import pipeline
from locedit.diffusion import load_model, save_model
from locedit.diffusion.model import finish_bundle
from locedit.diffusion.tiny import tiny_sd2_components, tiny_sdxl_bundle, tiny_sdxl_components
from locedit.inversion import INVERSIONS, NullTextOptions
from locedit.masks import Region
from locedit.guidance import GuidanceOptions, LocInvOptions
from locedit.methods import (METHODS, BlendedOptions, DiffEditOptions, LocInvEditOptions, MAGEditOptions,
                             MasaCtrlOptions, MDEEditOptions, PnPOptions)

STEPS = 3
FAST = fast_inversion_options()
box = square_box


def other_box(side=64):
    m = torch.zeros(1, 1, side, side)
    m[..., 40:60, 4:28] = 1
    return m


@pytest.fixture(scope="module")
def xl_dir(tmp_path_factory):
    return save_model(tiny_sdxl_bundle(seed=0), tmp_path_factory.mktemp("tiny-sdxl"))


@pytest.fixture(scope="module")
def sd2_dir(tmp_path_factory):
    unet, vae, te, tok, cfg = tiny_sd2_components(seed=0)
    b = finish_bundle(unet, vae, te, tok, cfg, "tiny-sd2", torch.device("cpu"), torch.float32)
    return save_model(b, tmp_path_factory.mktemp("tiny-sd2"))


@pytest.fixture(scope="module")
def families(xl_dir, sd2_dir):
    return {"sdxl": load_model(str(xl_dir)), "sd2": load_model(str(sd2_dir))}


# ---- SDXL as diffusers' pipeline conditions it ----------------------------------------------------
def test_sdxl_folder_loads_through_the_real_loader(xl_dir):
    b = load_model(str(xl_dir))
    assert b.family == "sdxl" and b.text_encoder_2 is not None and b.force_zeros_for_empty_prompt
    assert b.embed_length == b.max_tokens + 1
    index = json.loads((xl_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionXLPipeline"
    assert json.loads((xl_dir / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "EulerDiscreteScheduler"


def test_sdxl_text_and_unet_conditioning_match_diffusers_pipeline(xl_dir):
    from diffusers import DDIMScheduler, StableDiffusionXLPipeline

    b = load_model(str(xl_dir))
    pipe = StableDiffusionXLPipeline.from_pretrained(str(xl_dir))
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False)  # locedit never clips x0
    pe, ne, pp, npool = pipe.encode_prompt(SRC, device="cpu", do_classifier_free_guidance=True)
    ours = b.encode_text([SRC, ""])
    torch.testing.assert_close(ours[0, :-1], pe[0])
    torch.testing.assert_close(ours[0, -1, : b.pooled_dim], pp[0])
    assert torch.count_nonzero(ours[0, -1, b.pooled_dim:]) == 0
    assert torch.count_nonzero(ne) == 0 and torch.count_nonzero(ours[1]) == 0  # force_zeros_for_empty_prompt

    # five DDIM steps of the pipeline = locedit's own sampling loop on the same noise
    g = torch.Generator().manual_seed(3)
    noise = torch.randn(1, 4, 16, 16, generator=g)
    out = pipe(SRC, num_inference_steps=5, guidance_scale=7.5, latents=noise.clone(), output_type="latent",
               height=64, width=64).images
    from locedit.diffusion import ddim_step

    s = b.schedule(5)
    cond, null = ours.split(1)
    z = noise
    for i in range(5):
        eps = b.predict_eps(torch.cat([z, z]), s.timesteps[i], s.alphas[i], torch.cat([null, cond]))
        e_u, e_c = eps.chunk(2)
        z = ddim_step(z, e_u + 7.5 * (e_c - e_u), s.alphas[i], s.alphas_next[i])
    torch.testing.assert_close(z, out, rtol=1e-4, atol=1e-4)


def test_sdxl_vae_stays_float32_at_half_precision_unless_replaced(xl_dir, tmp_path):
    b = load_model(str(xl_dir), "cpu", "bf16")
    assert next(b.unet.parameters()).dtype == torch.bfloat16 and b.vae.dtype == torch.float32
    image = torch.rand(1, 3, 64, 64)
    assert b.decode_latents(b.encode_image(image)).dtype == torch.float32
    # a replacement VAE (SDXL's fp16-fix) runs in the requested precision
    b.vae.save_pretrained(tmp_path / "vae-fix", safe_serialization=True)
    b2 = load_model(str(xl_dir), "cpu", "bf16", vae=str(tmp_path / "vae-fix"))
    assert b2.vae.dtype == torch.bfloat16


def test_token_vectors_span_both_encoders(families):
    b = families["sdxl"]
    ids = b.tokenizer(SRC).input_ids
    v = b.input_token_vectors([ids[2]])
    assert v.shape == (1, 64)
    torch.testing.assert_close(v[0, :32], b.text_encoder.get_input_embeddings().weight[ids[2]])
    torch.testing.assert_close(v[0, 32:], b.text_encoder_2.get_input_embeddings().weight[ids[2]])
    # the hook writes each encoder's part: vectors equal to the tables change nothing
    same = b.encode_text_with_tokens(SRC, {2: v[0]})
    torch.testing.assert_close(same, b.encode_text([SRC]))
    moved = v[0].clone()
    moved[32:] += 1  # the second encoder's part only: the first encoder's columns stay
    emb = b.encode_text_with_tokens(SRC, {2: moved})
    torch.testing.assert_close(emb[0, :-1, :32], same[0, :-1, :32])
    assert not torch.allclose(emb[0, :-1, 32:], same[0, :-1, 32:])


# ---- every inversion and every method on both families --------------------------------------------
@pytest.fixture(scope="module")
def trajectories(families, image):
    return {(fam, name): pipeline.invert(b, image, SRC, name, num_steps=STEPS, options=FAST.get(name))
            for fam, b in families.items() for name in INVERSIONS}


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
def test_direct_inversion_reconstructs_exactly_and_identical_prompts_reproduce_it(families, trajectories, family):
    b = families[family]
    traj = trajectories[(family, "direct")]
    rec = pipeline.reconstruct(b, traj).latents
    torch.testing.assert_close(rec, traj.latents[0], rtol=0, atol=1e-5)
    ddim = trajectories[(family, "ddim")]
    same = pipeline.edit(b, None, SRC, SRC, method="p2p", trajectory=ddim).sample.latents
    torch.testing.assert_close(same[1], same[0], rtol=0, atol=1e-4)
    torch.testing.assert_close(same[0:1], pipeline.reconstruct(b, ddim).latents, rtol=0, atol=1e-4)


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
@pytest.mark.parametrize("inversion", list(INVERSIONS))
def test_every_inversion_with_p2p(families, trajectories, family, inversion):
    b = families[family]
    traj = trajectories[(family, inversion)]
    res = pipeline.edit(b, None, SRC, TGT, method="p2p", trajectory=traj, blend_words=("square", "square"))
    assert torch.isfinite(res.edited).all()
    # P2P rewrites the target only: the source row is the trajectory's own reconstruction
    if not traj.source_follows:
        torch.testing.assert_close(res.sample.latents[0:1], pipeline.reconstruct(b, traj).latents, rtol=0, atol=1e-4)


GUIDE = GuidanceOptions(guided_steps=2, iterations=2, step_size=2.5, sigma_scaling=True)


def _inputs(name):
    """The inputs and fast options that make each registry method act within three steps."""
    return {
        "p2p": {"blend_words": ("square", "square")},
        "mag-edit": {"regions": (Region("blue", box()),), "options": MAGEditOptions(guidance=GUIDE)},
        "mde-edit": {"regions": (Region("square", box()),), "attributes": (Region("blue", other_box()),),
                     "options": MDEEditOptions(guidance=GUIDE)},
        "locinv": {"regions": (Region("square", box()),), "options": LocInvEditOptions(locinv=LocInvOptions(max_inner=2, nti=NullTextOptions(inner_steps=2)))},
        "masactrl": {"options": MasaCtrlOptions(start_step=0, start_layer=0)},
        "pnp": {"options": PnPOptions(negative_prompt="")},
        "blended": {"options": BlendedOptions(start=0.0, noise="inversion"), "mask": box()},
        "diffedit": {"options": DiffEditOptions(encode_ratio=1.0, noises=2, clamp_ratio=1.5)},
        "sdedit": {},
    }[name]


@pytest.mark.parametrize("family", ["sdxl", "sd2"])
@pytest.mark.parametrize("method", list(METHODS))
def test_every_method_runs_on_the_family(families, image, trajectories, family, method):
    b = families[family]
    kwargs = _inputs(method)
    m = METHODS[method]
    takes = m.takes_inversion(kwargs.get("options", m.Options()))
    traj = trajectories[(family, "null-text")] if takes else None
    calls = b.unet_calls
    res = pipeline.edit(b, None if takes else image, SRC, TGT, method=method, trajectory=traj, num_steps=STEPS,
                        **kwargs)
    assert res.edited.shape == image.shape and torch.isfinite(res.edited).all()
    assert b.unet_calls > calls
    if method in ("mag-edit", "mde-edit"):  # the guidance moved the target away from plain P2P
        plain = pipeline.edit(b, None, SRC, TGT, method="p2p", trajectory=traj)
        assert not torch.allclose(res.sample.latents[-1], plain.sample.latents[-1])


def test_test_inputs_cover_the_registry():
    for name in METHODS:
        _inputs(name)


def test_null_text_learns_the_pooled_null_with_the_sequence(families, trajectories):
    b = families["sdxl"]
    nulls = trajectories[("sdxl", "null-text")].null_embeddings
    assert nulls[0].shape == (1, b.embed_length, 64)
    # the empty prompt starts at zeros (force_zeros_for_empty_prompt); both parts moved
    assert torch.count_nonzero(nulls[0][0, :-1]) > 0 and torch.count_nonzero(nulls[0][0, -1, : b.pooled_dim]) > 0
    # the padding beyond the pooled width never feeds the UNet, so it never moves
    assert torch.count_nonzero(nulls[0][0, -1, b.pooled_dim:]) == 0


def test_locinv_learns_vectors_of_both_tables(families, image):
    b = families["sdxl"]
    res = pipeline.edit(b, image, SRC, TGT, method="locinv", num_steps=2, **_inputs("locinv"))
    vecs = res.trajectory.token_vectors["square"]
    assert vecs.shape[-1] == b.token_width() == 64


# ---- InstructPix2Pix and LIME on SDXL's layout ---------------------------------------------------
@pytest.fixture(scope="module")
def xl_instruct(tmp_path_factory):
    unet, vae, te, te2, tok, tok2, cfg = tiny_sdxl_components(seed=2, in_channels=8)
    b = finish_bundle(unet, vae, te, tok, cfg, "tiny-sdxl-ip2p", torch.device("cpu"), torch.float32,
                      text_encoder_2=te2, tokenizer_2=tok2, force_zeros_for_empty_prompt=True)
    folder = save_model(b, tmp_path_factory.mktemp("tiny-sdxl-ip2p"))
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionXLInstructPix2PixPipeline"
    return load_model(str(folder))


@pytest.mark.parametrize("method", ["ip2p", "lime"])
def test_instruct_methods_on_sdxl_layout(xl_instruct, image, method):
    from locedit.instruct import INSTRUCT_METHODS

    m = INSTRUCT_METHODS[method]
    res = m.run(xl_instruct, image, "a blue square", 3, m.Options(), seed=0)
    assert res.latents.shape == (1, 4, 16, 16) and torch.isfinite(res.latents).all()


def test_cli_edits_with_an_sdxl_folder(xl_dir, scene_png, tmp_path):
    import subprocess
    import sys

    img, mask = scene_png
    out = tmp_path / "out.png"
    r = subprocess.run([sys.executable, "-m", "locedit", "edit", img, "--model", str(xl_dir), "--source", SRC,
                        "--target", TGT, "--method", "mag-edit", "--region", f"blue={mask}", "--inversion", "ddim",
                        "--steps", "2", "--quiet", "--json", "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.is_file() and json.loads(r.stdout)["method"] == "mag-edit"


def test_cli_vae_flag_replaces_the_vae_and_is_recorded(xl_dir, scene_png, tmp_path):
    import subprocess
    import sys

    from PIL import Image

    load_model(str(xl_dir)).vae.save_pretrained(tmp_path / "vae", safe_serialization=True)
    img, _ = scene_png
    out = tmp_path / "out.png"
    base = [sys.executable, "-m", "locedit", "edit", img, "--model", str(xl_dir), "--source", SRC, "--target", TGT,
            "--inversion", "ddim", "--steps", "2", "--quiet", "--out", str(out)]
    r = subprocess.run(base + ["--vae", str(tmp_path / "vae"), "--dtype", "bf16"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert Image.open(out).text["locedit:vae"] == str(tmp_path / "vae")
    out.unlink()
    r = subprocess.run(base + ["--vae", str(tmp_path / "nope")], capture_output=True, text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and not out.exists()


def test_sdxl_architecture_levels_and_layer_counts():
    """The full SDXL base architecture (built on the meta device: no memory): the methods' "16x16 maps"
    (latent/4) are its 32x32 level at 1024 px, 50 cross-attention layers, down and up; MasaCtrl's
    default start layer scales to 44 of SDXL's 70 transformer blocks, the first of the three the
    authors' SDXL script runs (run_synthesis_sdxl.py: 44, 54, 64 with total_layers 70)."""
    from locedit.attention import cross_maps_selector, map_level, unet_sites
    from locedit.control.masactrl import block_order
    from locedit.diffusion.tiny import sdxl_components

    with torch.device("meta"):
        unet = sdxl_components()[0]
    sites = unet_sites(unet)
    level = map_level(sites)
    assert level == 2 and unet.config.sample_size // 2**level == 32
    assert sum(cross_maps_selector(sites)(s) for s in sites) == 50
    blocks = max(block_order(sites).values()) + 1
    assert blocks == 70 and METHODS["masactrl"].Options().layer(blocks) == 44



@pytest.mark.parametrize("method", ["mag-edit", "mde-edit", "locinv"])
def test_guided_methods_run_at_half_precision(method, image):
    """The guidance losses compute in float32 on maps captured in the networks' dtype (MDE-Edit's
    BCE refused bf16 maps against float32 masks before)."""
    b = tiny_sdxl_bundle(seed=0, dtype=torch.bfloat16)
    kwargs = _inputs(method)
    traj = None if method == "locinv" else pipeline.invert(b, image, SRC, "ddim", num_steps=STEPS)
    res = pipeline.edit(b, image if traj is None else None, SRC, TGT, method=method, trajectory=traj,
                        num_steps=STEPS, **kwargs)
    assert torch.isfinite(res.edited).all()


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_a_diffusers_pipeline_edits_through_locedit_without_reloading(family, image):
    """Issue 31: a researcher holding a StableDiffusion(XL)Pipeline reaches locedit's editing from it:
    the bundle shares the pipeline's networks (no weight loaded again) and edits as locedit's own bundle
    of the same weights does, bitwise."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    from locedit.diffusion import from_pipeline
    from locedit.diffusion.tiny import tiny_components

    if family == "sd1":
        unet, vae, te, tok, cfg = tiny_components(seed=0)
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                       scheduler=DDIMScheduler.from_config(cfg), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    else:
        unet, vae, te, te2, tok, tok2, cfg = tiny_sdxl_components(seed=0)
        pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=te, text_encoder_2=te2, tokenizer=tok, tokenizer_2=tok2,
                                         unet=unet, scheduler=DDIMScheduler.from_config(cfg))
    bundle = from_pipeline(pipe, name="mine")
    assert bundle.unet is pipe.unet and bundle.vae is pipe.vae and bundle.text_encoder is pipe.text_encoder
    ours = pipeline.edit(bundle, image, SRC, TGT, inversion="ddim", num_steps=2, blend_words=("square", "square"))
    from locedit.diffusion.tiny import tiny_bundle

    same = tiny_bundle(seed=0) if family == "sd1" else tiny_sdxl_bundle(seed=0)  # the same weights, built by locedit
    theirs = pipeline.edit(same, image, SRC, TGT, inversion="ddim", num_steps=2, blend_words=("square", "square"))
    assert torch.equal(ours.sample.latents, theirs.sample.latents)
