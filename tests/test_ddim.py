import pytest
import torch
from diffusers import DDIMInverseScheduler, DDIMScheduler

from locedit.diffusion import DDIMSchedule, ddim_step, to_epsilon
from locedit.diffusion.tiny import SD_SCHEDULER_CONFIG


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("steps", [10, 50])
def test_schedule_matches_diffusers_timesteps(spacing, steps):
    cfg = dict(SD_SCHEDULER_CONFIG, timestep_spacing=spacing)
    ref = DDIMScheduler.from_config(cfg)
    ref.set_timesteps(steps)
    ours = DDIMSchedule.from_config(cfg, steps)
    assert list(ours.timesteps) == ref.timesteps.tolist()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_step_matches_scheduler_step(prediction_type):
    cfg = dict(SD_SCHEDULER_CONFIG, prediction_type=prediction_type)
    ref = DDIMScheduler.from_config(cfg)
    ref.set_timesteps(20)
    ours = DDIMSchedule.from_config(cfg, 20)
    g = torch.Generator().manual_seed(0)
    for i in (0, 7, 19):  # first, middle, last (which steps to the final alpha)
        z = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        out = torch.randn(2, 4, 8, 8, generator=g, dtype=torch.float64)
        t = ours.timesteps[i]
        expected = ref.step(out, t, z).prev_sample
        eps = to_epsilon(out, z, ours.alphas[i], prediction_type)
        got = ddim_step(z, eps, ours.alphas[i], ours.alphas_next[i])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_inverse_step_matches_inverse_scheduler(prediction_type):
    cfg = dict(SD_SCHEDULER_CONFIG, prediction_type=prediction_type)
    ref = DDIMInverseScheduler.from_config(cfg, set_alpha_to_one=False)
    ref.set_timesteps(20)
    ours = DDIMSchedule.from_config(cfg, 20)
    g = torch.Generator().manual_seed(1)
    for j, t in enumerate(ref.timesteps.tolist()):
        i = 19 - j
        assert ours.timesteps[i] == t
        z = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        out = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        expected = ref.step(out, t, z).prev_sample
        eps = to_epsilon(out, z, ours.alphas_next[i], prediction_type)
        got = ddim_step(z, eps, ours.alphas_next[i], ours.alphas[i])
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_step_then_inverse_step_is_identity_for_fixed_eps():
    s = DDIMSchedule.from_config(SD_SCHEDULER_CONFIG, 10)
    z = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    eps = torch.randn(1, 4, 8, 8, dtype=torch.float64)
    back = ddim_step(ddim_step(z, eps, s.alphas[3], s.alphas_next[3]), eps, s.alphas_next[3], s.alphas[3])
    torch.testing.assert_close(back, z)


# ---- the sampler interface (locedit.diffusion.sampler.DDIM) ---------------------------------------------
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_ddim_sampler_walks_diffusers_ddim_scheduler(prediction_type):
    """Every sampling step of the sampler: same timestep, and prediction + step = DDIMScheduler.step."""
    from locedit.diffusion.sampler import DDIM

    cfg = dict(SD_SCHEDULER_CONFIG, prediction_type=prediction_type)
    ref = DDIMScheduler.from_config(cfg)
    ref.set_timesteps(12)
    sampler = DDIM(cfg)
    steps = sampler.schedule(12)
    assert [s.t for s in steps] == ref.timesteps.tolist() and [s.index for s in steps] == list(range(12))
    g = torch.Generator().manual_seed(2)
    for s in steps:
        z = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        out = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        got = sampler.step(z, sampler.prediction(out, z, s), s)
        torch.testing.assert_close(got, ref.step(out, s.t, z).prev_sample, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_sampler_reverse_is_diffusers_inverse_scheduler(prediction_type):
    from locedit.diffusion.sampler import DDIM

    cfg = dict(SD_SCHEDULER_CONFIG, prediction_type=prediction_type)
    ref = DDIMInverseScheduler.from_config(cfg, set_alpha_to_one=False)
    ref.set_timesteps(12)
    sampler = DDIM(cfg)
    g = torch.Generator().manual_seed(3)
    for s, t in zip(sampler.schedule(12)[::-1], ref.timesteps.tolist()):
        back = sampler.reverse(s)
        assert back.t == t
        z = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        out = torch.randn(1, 4, 8, 8, generator=g, dtype=torch.float64)
        got = sampler.step(z, sampler.prediction(out, z, back), back)
        torch.testing.assert_close(got, ref.step(out, t, z).prev_sample, rtol=1e-5, atol=1e-6)


def test_ddim_sampler_noising_is_diffusers_add_noise_at_the_steps_timestep():
    from diffusers import DDPMScheduler

    from locedit.diffusion.sampler import DDIM

    sampler = DDIM(SD_SCHEDULER_CONFIG)
    ref = DDPMScheduler.from_config(SD_SCHEDULER_CONFIG)
    z0, noise = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for s in sampler.schedule(10):
        torch.testing.assert_close(sampler.noised(z0, noise, s), ref.add_noise(z0, noise, torch.tensor([s.t])))
    land = sampler.landing(sampler.reverse(sampler.schedule(10)[4]))
    assert land.at == land.to == sampler.schedule(10)[4].at  # the fixed-point inversions evaluate at the landing level
