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
