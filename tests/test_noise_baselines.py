"""SDEdit and Blended Latent Diffusion: their defining properties on the tiny model."""

import numpy as np
import pytest
import torch

from locedit import pipeline
from locedit.diffusion import add_noise, ddim_step
from locedit.errors import LoceditError
from locedit.methods import BlendedOptions, SDEditOptions
from locedit.methods.blended import latent_mask
from locedit.options import preset

SRC = "a red square on the gray background"
TGT = "a blue circle on the gray background"


def box_mask(side=64, y=(16, 40), x=(20, 44)):
    m = torch.zeros(1, 1, side, side)
    m[..., y[0]:y[1], x[0]:x[1]] = 1
    return m


def plain_target_sampling(bundle, start, first, steps, guidance=7.5, after=None):
    """The target prompt alone from ``start`` at step ``first``: DDIM with CFG, written out here."""
    sched = bundle.schedule(steps)
    emb = bundle.encode_text(["", TGT])
    z = start.clone()
    for i in range(first, steps):
        with torch.no_grad():
            eu, ec = bundle.predict_eps(torch.cat([z, z]), sched.timesteps[i], sched.alphas[i], emb).chunk(2)
        z = ddim_step(z, eu + guidance * (ec - eu), sched.alphas[i], sched.alphas_next[i])
        if after is not None:
            z = after(i, z)
    return z


def test_sdedit_at_strength_zero_returns_the_input_latent(bundle, image):
    res = pipeline.edit(bundle, image, SRC, TGT, method="sdedit", options=SDEditOptions(strength=0.0), num_steps=4)
    assert res.stats["edit_unet_calls"] == 0
    assert torch.equal(res.sample.latents, bundle.encode_image(image))


def test_sdedit_noises_to_the_strength_then_samples_the_target(bundle, image):
    steps, seed = 6, 3
    res = pipeline.edit(bundle, image, SRC, TGT, method="sdedit", options=SDEditOptions(strength=0.5), num_steps=steps,
                        seed=seed)
    first = steps - int(steps * 0.5)
    sched = bundle.schedule(steps)
    z0 = bundle.encode_image(image)
    noise = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    start = add_noise(z0, noise, sched.alphas[first])
    want = plain_target_sampling(bundle, start, first, steps)
    assert res.stats["edit_unet_calls"] == steps - first  # the target alone: one batched call a step
    torch.testing.assert_close(res.sample.latents, want, rtol=0, atol=1e-5)
    other = pipeline.edit(bundle, image, SRC, TGT, method="sdedit", options=SDEditOptions(strength=0.5),
                          num_steps=steps, seed=seed + 1)
    assert not torch.allclose(other.sample.latents, res.sample.latents)


def test_blended_official_keeps_every_latent_outside_the_mask_equal_to_the_noised_source(bundle, image):
    steps, seed = 5, 11
    mask = box_mask()
    res = pipeline.edit(bundle, image, SRC, TGT, method="blended", options=BlendedOptions(start=0.4, init="noise"),
                        mask=mask, num_steps=steps, seed=seed)
    first = int(steps * 0.4)
    assert res.stats["edit_unet_calls"] == steps - first
    m = latent_mask(bundle, mask)
    # the script's draws: the start, then one per step, each background at the level the step came from
    sched = bundle.schedule(steps)
    z0 = bundle.encode_image(image)
    g = torch.Generator().manual_seed(seed)
    start = torch.randn(z0.shape, generator=g)
    backgrounds = {i: add_noise(z0, torch.randn(z0.shape, generator=g), sched.alphas[i]) for i in range(first, steps)}
    want = plain_target_sampling(bundle, start, first, steps,
                                 after=lambda i, z: z * m + backgrounds[i] * (1 - m))
    torch.testing.assert_close(res.sample.latents, want, rtol=0, atol=1e-5)
    out = res.sample.latents
    assert torch.equal(out * (1 - m), backgrounds[steps - 1] * (1 - m))
    assert not torch.allclose(out * m, backgrounds[steps - 1] * m)  # the inside is sampled
    assert torch.equal(res.trajectory.image_latent, z0)


def test_blended_paper_reading_starts_from_the_noised_source(bundle, image):
    steps, seed = 4, 5
    opts = preset(BlendedOptions, "paper")
    assert opts.init == "source" and preset(BlendedOptions, "official").init == "noise"
    res = pipeline.edit(bundle, image, SRC, TGT, method="blended", options=opts, mask=box_mask(), num_steps=steps,
                        seed=seed)
    z0 = bundle.encode_image(image)
    start = torch.randn(z0.shape, generator=torch.Generator().manual_seed(seed))
    first = int(steps * opts.start)
    torch.testing.assert_close(res.trajectory.latents[steps - first], add_noise(z0, start, bundle.schedule(steps).alphas[first]))


@pytest.mark.parametrize("inversion", ["ddim", "direct"])
def test_blended_on_an_inversion_ends_on_the_image_latent_outside_the_mask(bundle, image, inversion):
    mask = box_mask()
    res = pipeline.edit(bundle, image, SRC, TGT, method="blended", options=BlendedOptions(start=0.0, noise="inversion"),
                        inversion=inversion, mask=mask, num_steps=3)
    m = latent_mask(bundle, mask)
    z0 = res.trajectory.latents[0]
    assert torch.equal(res.sample.latents * (1 - m), z0 * (1 - m))
    assert res.trajectory.method == inversion
    assert res.stats["edit_unet_calls"] == 3  # no source branch


def test_blended_refuses_what_it_cannot_use(bundle, image):
    with pytest.raises(LoceditError, match="needs the region"):
        pipeline.edit(bundle, image, SRC, TGT, method="blended", num_steps=3)
    with pytest.raises(LoceditError, match="does not apply"):
        BlendedOptions(noise="inversion", init="noise")
    with pytest.raises(LoceditError, match="start"):
        BlendedOptions(start=1.0)
    with pytest.raises(LoceditError, match="strength"):
        SDEditOptions(strength=1.5)


# ---- DiffEdit --------------------------------------------------------------------------------------------
def test_diffedit_mask_follows_the_rescale_and_threshold():
    from locedit.methods.diffedit import mask_from_estimates

    ref = torch.zeros(2, 4, 4, 4)
    q = torch.zeros(2, 4, 4, 4)
    q[:, :, 0, 0] = 8.0  # mean of the map: 8/16 = 0.5; clamp at 1.5; rescaled 1 at (0, 0)
    q[:, :, 1, 1] = 0.6  # rescaled 0.4: below 0.5
    q[:, :, 2, 2] = 1.0  # rescaled 0.67: in
    m = mask_from_estimates(ref, q, clamp_ratio=3.0, threshold=0.5)
    assert m.shape == (1, 1, 4, 4)
    assert {(int(i), int(j)) for i, j in m[0, 0].nonzero()} == {(0, 0), (2, 2)}


def test_diffedit_pastes_the_inversion_outside_its_mask_and_starts_at_the_ratio(bundle, image):
    from locedit.methods import DiffEditOptions
    from locedit.methods.diffedit import diffedit_mask

    steps = 5
    opts = DiffEditOptions(encode_ratio=0.6, noises=3, clamp_ratio=1.5)
    res = pipeline.edit(bundle, image, SRC, TGT, method="diffedit", options=opts, inversion="ddim", num_steps=steps,
                        seed=2)
    traj = res.trajectory
    m = diffedit_mask(bundle, traj.latents[0], SRC, TGT, steps, opts, seed=2)
    assert 0 < m.sum() < m.numel()  # a real region
    assert torch.equal(res.sample.blend_mask, m)
    out = res.sample.latents
    assert torch.equal(out * (1 - m), traj.latents[0] * (1 - m))  # the image latent outside the mask
    first = steps - int(steps * 0.6)
    assert res.stats["edit_unet_calls"] == (steps - first) + 1  # the target alone, plus the mask's one batch
    want = plain_target_sampling(bundle, traj.latents[steps - first], first, steps,
                                 after=lambda i, z: z * m + traj.target_latent(i) * (1 - m))
    torch.testing.assert_close(out, want, rtol=0, atol=1e-5)


def test_the_diffedit_mask_is_offered_to_any_method_that_takes_a_mask(bundle, model_dir, tmp_path):
    from PIL import Image

    from locedit.cli import main
    from locedit.methods import DiffEditOptions
    from locedit.methods.diffedit import diffedit_mask

    img = np.full((64, 64, 3), 128, np.uint8)
    img[16:40, 20:44] = [230, 25, 25]
    Image.fromarray(img).save(tmp_path / "in.png")
    argv = ["edit", str(tmp_path / "in.png"), "--source", SRC, "--target", TGT, "--model", str(model_dir),
            "--inversion", "ddim", "--steps", "3", "--seed", "4", "--mask-from", "diffedit", "--quiet",
            "--panel", str(tmp_path / "panel.png"), "--out", str(tmp_path / "out.png")]
    assert main(argv) == 0
    panel = np.asarray(Image.open(tmp_path / "panel.png").convert("L")).astype(float) / 255
    used = panel[:, 128:192] > 0.5  # the panel's third image is the mask the edit used
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    small = diffedit_mask(bundle, bundle.encode_image(x), SRC, TGT, 3, DiffEditOptions(), seed=4)
    want = torch.nn.functional.interpolate(small, size=(64, 64))[0, 0].numpy() > 0.5
    assert 0 < want.sum() < want.size and np.array_equal(used, want)
    assert Image.open(tmp_path / "out.png").info["locedit:mask_from"] == "diffedit"
