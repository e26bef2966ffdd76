"""Every inversion with every engine that runs on a trajectory (issue: any inversion x any engine),
on the tiny model, three steps each; each pair is checked for the property that ties the engine to
the trajectory it was given."""

import pytest
import torch
from conftest import SRC, TGT, fast_inversion_options, square_box

from locedit import pipeline
from locedit.inversion import INVERSIONS
from locedit.methods import METHODS, BlendedOptions, DiffEditOptions, MasaCtrlOptions, PnPOptions
from locedit.methods.blended import latent_mask

STEPS = 3
FAST = fast_inversion_options()
box = square_box


# the engines, with options that act within three steps; the guided methods (MAG-Edit, MDE-Edit)
# run on trajectories too and are covered by their own tests
ENGINES = {
    "p2p": {},
    "masactrl": {"options": MasaCtrlOptions(start_step=0, start_layer=0)},
    "pnp": {"options": PnPOptions(negative_prompt="")},  # null-text and NPI bring their own unconditional
    "blended": {"options": BlendedOptions(start=0.0, noise="inversion"), "mask": box()},
    "diffedit": {"options": DiffEditOptions(encode_ratio=1.0, noises=2, clamp_ratio=1.5)},
}


def test_the_engine_list_covers_every_trajectory_engine_of_the_registry():
    guided = {"mag-edit", "mde-edit"}
    takes = {name for name, m in METHODS.items() if "inversion" in m.uses} - guided
    assert takes == set(ENGINES)


@pytest.fixture(scope="module")
def trajectories(bundle, image):
    return {name: pipeline.invert(bundle, image, SRC, name, num_steps=STEPS, options=FAST.get(name))
            for name in INVERSIONS}


@pytest.mark.parametrize("inversion", list(INVERSIONS))
@pytest.mark.parametrize("engine", list(ENGINES))
def test_every_inversion_with_every_engine(bundle, image, trajectories, inversion, engine):
    traj = trajectories[inversion]
    kwargs = ENGINES[engine]
    res = pipeline.edit(bundle, None, SRC, TGT, method=engine, trajectory=traj, **kwargs)
    assert res.edited.shape == image.shape and torch.isfinite(res.edited).all()
    out, z0 = res.sample.latents, traj.latents[0]
    if engine == "blended":  # the background is the inversion's: exactly the image latent at the end
        m = latent_mask(bundle, box())
        assert torch.equal(out[-1:] * (1 - m), z0 * (1 - m))
    elif engine == "diffedit":
        m = res.sample.blend_mask
        assert torch.equal(out[-1:] * (1 - m), z0 * (1 - m))
    elif engine == "pnp":  # the source row reads the inversion at every step
        assert torch.equal(out[0:1], z0)
    elif not traj.source_follows:
        # P2P and MasaCtrl rewrite the target only: the source row is the inversion's reconstruction
        # under its editing-side rule (null-text's nulls, NPI's prompt, NMG's source moves)
        recon = pipeline.reconstruct(bundle, traj).latents
        torch.testing.assert_close(out[0:1], recon, rtol=0, atol=1e-4)
        if not traj.source_guidance:
            # with the target prompt equal to the source, the target is that reconstruction too
            same = pipeline.edit(bundle, None, SRC, SRC, method=engine, trajectory=traj, **kwargs).sample.latents
            torch.testing.assert_close(same[1], same[0], rtol=0, atol=1e-4)
    else:  # direct inversion: the source row is pinned to the inversion
        assert torch.equal(out[0:1], z0)
