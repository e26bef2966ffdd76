"""Issue 33, item 1: the flow-matching sampler and the FLUX / SD3 families - the schedule equals
diffusers' FlowMatchEulerDiscreteScheduler, Euler inversion then sampling reconstructs to solver
error, and plain generation equals FluxPipeline's and StableDiffusion3Pipeline's own (1e-4) on tiny
random models built in code, also after a save and a load through locedit's loader."""

import pytest
import torch
from flow_models import tiny_flux, tiny_sd3

from locedit.diffusion import flow
from locedit.diffusion.flow_model import from_flow_pipeline, generate

PROMPT = "a red circle and a blue striped square on a gray background"


@pytest.mark.parametrize("config,tokens", [
    (dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
          base_image_seq_len=256, max_image_seq_len=4096), 4096),
    (dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
          base_image_seq_len=256, max_image_seq_len=4096), 16),
    (dict(num_train_timesteps=1000, shift=3.0), None),
    (dict(num_train_timesteps=1000, shift=1.0), None),
])
@pytest.mark.parametrize("steps", [1, 4, 28])
def test_the_schedule_is_diffusers(config, tokens, steps):
    import numpy as np
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(**config)
    if config.get("use_dynamic_shifting"):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(tokens, 256, 4096, 0.5, 1.15)
        assert flow.calculate_shift(tokens, config) == pytest.approx(mu)
        s.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), mu=mu)
    else:
        s.set_timesteps(steps)
    assert torch.equal(flow.flow_sigmas(config, steps, tokens), s.sigmas)
    assert torch.equal(flow.timesteps(flow.flow_sigmas(config, steps, tokens), config), s.timesteps)


def test_the_euler_step_is_the_schedulers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    s = FlowMatchEulerDiscreteScheduler(shift=3.0)
    s.set_timesteps(5)
    x, v = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for k, t in enumerate(s.timesteps):
        assert torch.equal(flow.euler_step(x, v, s.sigmas[k], s.sigmas[k + 1]), s.step(v, t, x).prev_sample)


def test_pack_and_unpack_are_the_pipelines():
    from diffusers import FluxPipeline

    z = torch.randn(2, 4, 6, 8)
    packed = FluxPipeline._pack_latents(z, 2, 4, 6, 8)
    assert torch.equal(flow.pack(z), packed) and torch.equal(flow.unpack(packed, 6, 8), z)
    assert torch.equal(flow.image_ids(3, 4), FluxPipeline._prepare_latent_image_ids(1, 3, 4, "cpu", torch.float32))


@pytest.fixture(scope="module")
def flux():
    return tiny_flux(seed=0)


@pytest.fixture(scope="module")
def sd3():
    return tiny_sd3(seed=0)


def test_flux_generation_equals_fluxpipeline(flux):
    bundle = from_flow_pipeline(flux)
    for guidance in (3.5, 1.0):
        ours = generate(bundle, PROMPT, num_steps=3, guidance=guidance, seed=7, height=32, width=32)
        theirs = flux(PROMPT, num_inference_steps=3, guidance_scale=guidance, height=32, width=32,
                      generator=torch.Generator().manual_seed(7), output_type="latent").images
        torch.testing.assert_close(flow.pack(ours), theirs, rtol=0, atol=1e-4)
    ours = generate(bundle, PROMPT, num_steps=3, seed=7, height=32, width=32, true_cfg=2.0)
    theirs = flux(PROMPT, negative_prompt="", true_cfg_scale=2.0, num_inference_steps=3, height=32, width=32,
                  generator=torch.Generator().manual_seed(7), output_type="latent").images
    torch.testing.assert_close(flow.pack(ours), theirs, rtol=0, atol=1e-4)
    assert bundle.unet_calls == 3 * 2 + 3 * 2  # one call a step, two with true CFG


def test_sd3_generation_equals_stablediffusion3pipeline(sd3):
    bundle = from_flow_pipeline(sd3)
    for guidance in (7.0, 1.0):
        ours = generate(bundle, PROMPT, num_steps=3, guidance=guidance, seed=3, height=32, width=32)
        theirs = sd3(PROMPT, num_inference_steps=3, guidance_scale=guidance, height=32, width=32,
                     generator=torch.Generator().manual_seed(3), output_type="latent").images
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-4)


@pytest.mark.parametrize("which", ["flux", "sd3"])
def test_euler_inversion_then_sampling_reconstructs_to_solver_error(which, flux, sd3):
    """Inverting with Euler steps up the schedule and sampling back at the same prompt (no CFG)
    returns the latent up to the solver's error, which shrinks as the steps grow."""
    bundle = from_flow_pipeline(flux if which == "flux" else sd3)
    torch.manual_seed(0)
    x0 = torch.randn(1, bundle.latent_channels, 4, 4)
    text = bundle.encode_text([PROMPT])
    errors = []
    for steps in (4, 16):
        sigmas = bundle.sigmas(steps, 4, 4)
        up, z = flow.inversion_sigmas(sigmas), x0
        with torch.no_grad():
            for k in range(steps):
                z = flow.euler_step(z, bundle.velocity(z, up[k], text, 1.0), up[k], up[k + 1])
            for k in range(steps):
                z = flow.euler_step(z, bundle.velocity(z, sigmas[k], text, 1.0), sigmas[k], sigmas[k + 1])
        errors.append((z - x0).abs().max().item())
    assert errors[1] < errors[0] / 2, errors


@pytest.mark.parametrize("which", ["flux", "sd3"])
def test_a_saved_folder_loads_through_locedits_loader_and_generates_the_same(which, flux, sd3, tmp_path):
    from locedit.diffusion import load_model
    from locedit.diffusion.flow_model import FlowBundle

    pipe = flux if which == "flux" else sd3
    pipe.save_pretrained(tmp_path / which, safe_serialization=True)
    bundle = load_model(str(tmp_path / which))
    assert isinstance(bundle, FlowBundle) and bundle.family == which
    ours = generate(bundle, PROMPT, num_steps=2, seed=1, height=32, width=32)
    theirs = generate(from_flow_pipeline(pipe), PROMPT, num_steps=2, seed=1, height=32, width=32)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_a_flow_folder_of_other_classes_is_refused(flux, tmp_path, capsys):
    import json

    from locedit.diffusion import load_model
    from locedit.errors import ModelLoadError

    flux.save_pretrained(tmp_path / "f", safe_serialization=True)
    index = json.loads((tmp_path / "f" / "model_index.json").read_text())
    index["transformer"] = ["diffusers", "SD3Transformer2DModel"]
    (tmp_path / "f" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="gives transformer the class diffusers.SD3Transformer2DModel"):
        load_model(str(tmp_path / "f"))


def test_the_unet_methods_refuse_a_flow_model_in_one_line(flux, sd3, scene_png, tmp_path, capsys):
    from locedit import pipeline
    from locedit.cli import main
    from locedit.errors import LoceditError

    bundle = from_flow_pipeline(sd3, name="tiny-sd3")
    image = torch.rand(1, 3, 32, 32)
    with pytest.raises(LoceditError, match="--method p2p runs on UNet models .* 'tiny-sd3' is a sd3 model: "
                                            "edit it with 'locedit edit --method flowedit'$"):
        pipeline.edit(bundle, image, "a red square", "a blue square")
    with pytest.raises(LoceditError, match="--inversion ddim runs on UNet models"):
        pipeline.invert(bundle, image, "a red square", "ddim", num_steps=2)
    assert bundle.unet_calls == 0
    flux.save_pretrained(tmp_path / "f", safe_serialization=True)
    capsys.readouterr()
    code = main(["edit", scene_png[0], "--source", "a red square", "--target", "a blue square", "--model",
                 str(tmp_path / "f"), "--steps", "2", "--quiet", "--out", str(tmp_path / "o.png")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is a flux model" in err[0] and not (tmp_path / "o.png").exists()
    from locedit.flow import FLOW_EDITORS

    assert err[0].endswith("'locedit edit --method " + "|".join(FLOW_EDITORS) + "'")  # every editor runs on FLUX


def test_the_flow_sampler_behind_the_sampler_interface(flux):
    """SAMPLERS["flow-euler"]: the schedule's levels are the sigmas, a step is the scheduler's, and
    reverse() is Euler inversion: evaluated at the lower sigma, landing on the higher."""
    from locedit.diffusion.sampler import SAMPLERS

    bundle = from_flow_pipeline(flux)
    sampler = SAMPLERS["flow-euler"](bundle.scheduler_config, tokens=bundle.tokens(4, 4))
    steps = sampler.schedule(5)
    sigmas = bundle.sigmas(5, 4, 4)
    assert [s.at for s in steps] == sigmas[:-1].tolist() and [s.to for s in steps] == sigmas[1:].tolist()
    x, v = torch.randn(1, 4, 4, 4), torch.randn(1, 4, 4, 4)
    for s in steps:
        back = sampler.reverse(s)
        assert (back.at, back.to, back.t) == (s.to, s.at, s.to * 1000)
        assert torch.equal(sampler.step(x, v, s), x + (s.to - s.at) * v)
        assert torch.equal(sampler.noised(x, v, s), (1 - s.at) * x + s.at * v)
    assert sampler.prediction(v, x, steps[0]) is v


def _field(x, t):
    """A smooth velocity field for the solver tests: v = -x * (1 + t) + sin(t)."""
    return -x * (1 + float(t)) + torch.sin(torch.tensor(float(t)))


def test_the_solvers_steps_written_out():
    x = torch.randn(1, 4, 2, 2, dtype=torch.float64)
    t, t2 = 0.8, 0.5
    d = t2 - t
    euler, calls = flow.walk(_field, x, [t, t2], "euler")
    assert calls == 1 and torch.allclose(euler, x + d * _field(x, t))
    rf, calls = flow.walk(_field, x, [t, t2], "rf-solver")
    v = _field(x, t)
    slope = (_field(x + d / 2 * v, t + d / 2) - v) / (d / 2)  # RF-Solver Eq. 8
    assert calls == 2 and torch.allclose(rf, x + d * v + 0.5 * d * d * slope)
    levels = [0.9, 0.6, 0.3, 0.0]
    fire, calls = flow.walk(_field, x, levels, "fireflow")
    assert calls == 1 + len(levels) - 1  # the first velocity, then one midpoint a step
    y, reuse = x, None
    for a, b in zip(levels[:-1], levels[1:]):  # FireFlow Eq. 9-10: the last midpoint velocity reused
        v = _field(y, a) if reuse is None else reuse
        reuse = _field(y + (b - a) / 2 * v, a + (b - a) / 2)
        y = y + (b - a) * reuse
    assert torch.allclose(fire, y)


def test_second_order_solvers_invert_more_exactly_than_euler(flux):
    """Inversion then sampling at the same steps: RF-Solver and FireFlow come back closer than Euler
    (their local error is third order)."""
    bundle = from_flow_pipeline(flux)
    torch.manual_seed(0)
    x0 = torch.randn(1, bundle.latent_channels, 4, 4)
    text = bundle.encode_text([PROMPT])
    levels = bundle.sigmas(6, 4, 4).tolist()

    def v(z, t):
        return bundle.velocity(z, t, text, 1.0)

    errors = {}
    with torch.no_grad():
        for solver in flow.SOLVERS:
            up, _ = flow.walk(v, x0, levels[::-1], solver)
            back, _ = flow.walk(v, up, levels, solver)
            errors[solver] = (back - x0).abs().max().item()
    assert errors["rf-solver"] < errors["euler"] and errors["fireflow"] < errors["euler"], errors


def test_flux_word_maps_leave_the_output_alone_and_cover_every_block(flux):
    """Recording the joint attention changes nothing in the model's output (bitwise), sees every
    double- and single-stream block once per call, gives maps on the packed grid, and finds a word's
    T5 tokens where the tokenizer puts them; the model's processors come back after."""
    from locedit.flow.maps import recording, t5_positions

    bundle = from_flow_pipeline(flux)
    torch.manual_seed(0)
    z = torch.randn(1, bundle.latent_channels, 8, 8)
    text = bundle.encode_text([PROMPT])
    before = {k: type(v) for k, v in bundle.transformer.attn_processors.items()}
    with torch.no_grad():
        plain = bundle.velocity(z, 0.5, text)
        with recording(bundle.transformer, text.states.shape[1]) as store:
            recorded = bundle.velocity(z, 0.5, text)
    assert torch.equal(plain, recorded)
    cfg = bundle.transformer.config
    assert store.count == cfg.num_layers + cfg.num_single_layers
    positions = t5_positions(flux.tokenizer_2, PROMPT, "circle")
    ids = flux.tokenizer_2(PROMPT).input_ids
    assert [flux.tokenizer_2.convert_ids_to_tokens(ids[p]) for p in positions] == ["\u2581circle"]
    maps = store.maps(positions, 4, 4)
    assert maps.shape == (1, 4, 4)
    # each image query's softmax runs over text and image keys: the text's whole share is below 1
    everything = store.maps(list(range(text.states.shape[1])), 4, 4)
    assert (everything < 1).all() and (everything > maps).all()
    assert {k: type(v) for k, v in bundle.transformer.attn_processors.items()} == before
