"""Noise Map Guidance and AIDI's fixed-point inversion: their defining properties."""

import torch

from locedit import pipeline
from locedit.attention import AttentionController, Chain
from locedit.diffusion import ddim_step
from locedit.inversion import AIDIOptions, NMGOptions, Trajectory
from locedit.inversion.nmg import noise_map_step

SRC = "a red square on the gray background"
TGT = "a blue square on the gray background"


def test_noise_map_step_without_guidance_is_the_plain_null_ddim_step(bundle, image):
    traj = pipeline.invert(bundle, image, SRC, "ddim", num_steps=4)
    sched, z, null = bundle.schedule(4), traj.noise, bundle.encode_text([""])
    t, a, a_next = sched.timesteps[0], sched.alphas[0], sched.alphas_next[0]
    plain = ddim_step(z, bundle.predict_eps(z, t, a, null), a, a_next)
    move = bundle.steps(4)[0]
    torch.testing.assert_close(noise_map_step(bundle, z, move, null, traj.target_latent(0), 5e3, 0.0),
                               plain, rtol=0, atol=1e-6)
    # the guidance pulls the source towards the inversion's latent at the level it lands on (a small
    # scale: the L1 mean's gradient is a sign step of fixed size, which the code's 5e3 makes far
    # larger than the distance on any model; docs/conformance.md)
    target = traj.target_latent(0)
    guided = noise_map_step(bundle, z, move, null, target, 1.0, 10.0)
    assert (guided - target).abs().mean() < (plain - target).abs().mean()


class Seen(AttentionController):
    """Counts the attention calls a controller is asked about, per clock phase."""

    reads = frozenset()
    writes = frozenset()

    def __init__(self):
        super().__init__()
        self.phases = {}

    def wants(self, site):
        self.phases[self.clock.phase] = self.phases.get(self.clock.phase, 0) + 1
        return False


def test_nmg_moves_the_source_row_before_each_step_outside_the_controllers_phase(bundle, image):
    traj = pipeline.invert(bundle, image, SRC, "nmg", num_steps=3)
    assert traj.method == "nmg" and set(traj.source_guidance) == {"grad_scale", "scale", "loss"}
    seen = Seen()
    res = pipeline.sample(bundle, traj, [SRC, TGT], controller=seen)
    assert res.unet_calls == 6  # one guided source call and one text-conditioned batch a step
    assert set(seen.phases) == {"sample", "inversion-guide"}  # controllers see the phase and act on "sample" only
    plain = pipeline.sample(bundle, Trajectory("ddim", SRC, 3, 7.5, traj.latents), [SRC, TGT])
    assert (res.latents[0] - plain.latents[0]).abs().max() > 1e-4  # the rule acts
    off = pipeline.invert(bundle, image, SRC, "nmg", num_steps=3, options=NMGOptions(scale=0.0))
    # with s_N = 0 the source takes the null prediction's DDIM move, then the text step: not the plain loop
    assert not torch.allclose(pipeline.sample(bundle, off, [SRC, TGT]).latents[0], plain.latents[0])


def test_nmg_rule_survives_save_and_load(bundle, image, tmp_path):
    traj = pipeline.invert(bundle, image, SRC, "nmg", num_steps=2, options=NMGOptions(grad_scale=100.0, loss="l2"))
    back, _ = Trajectory.load(traj.save(tmp_path / "inv"))
    assert back.source_guidance == {"grad_scale": 100.0, "scale": 10.0, "loss": "l2"}
    torch.testing.assert_close(pipeline.sample(bundle, back, [SRC]).latents, pipeline.sample(bundle, traj, [SRC]).latents)
    # a trajectory saved before the rule was named by its fields alone ({"rule": "nmg", ...}) still loads
    import json

    manifest = json.loads((tmp_path / "inv" / "manifest.json").read_text())
    manifest["source_guidance"] = {"rule": "nmg", **manifest["source_guidance"]}
    (tmp_path / "inv" / "manifest.json").write_text(json.dumps(manifest))
    old, _ = Trajectory.load(tmp_path / "inv")
    assert old.source_guidance == back.source_guidance


def test_aidi_rounds_drive_the_fixed_point_residual_down_on_the_bundled_model():
    from pathlib import Path

    from locedit.diffusion import load_model
    from locedit.fileio import load_image

    b = load_model("shapes")
    x = load_image(Path(__file__).resolve().parents[1] / "examples" / "shapes-scene.png")
    src = "a red circle and a blue striped square on a gray background"
    one = pipeline.invert(b, x, src, "aidi", num_steps=6, options=AIDIOptions(rounds=1))
    five = pipeline.invert(b, x, src, "aidi", num_steps=6, options=AIDIOptions(rounds=5))
    assert one.stats["unet_calls"] == 6 * 2 and five.stats["unet_calls"] == 6 * 6
    # past the first step (where DDIM is already near the fixed point), five rounds end closer to
    # z = f(z) than the DDIM start they began from at every step, and typically 10x closer (the second of
    # six steps, the largest jump, contracts slowest: 0.58x on the v2 model)
    ratios = sorted(end / start for start, end in list(zip(five.stats["residual_ddim"], five.stats["residual"]))[1:])
    assert ratios[-1] < 0.8 and ratios[len(ratios) // 2] < 0.1
    ddim = pipeline.invert(b, x, src, "ddim", num_steps=6)
    assert not torch.equal(one.latents[1], ddim.latents[1])  # one round already moves off DDIM's step


def test_a_pinned_source_row_skips_the_noise_map_move(bundle, image):
    from locedit.methods import PnPOptions

    traj = pipeline.invert(bundle, image, SRC, "nmg", num_steps=3)
    res = pipeline.edit(bundle, None, SRC, TGT, method="pnp", trajectory=traj, options=PnPOptions())
    assert res.stats["edit_unet_calls"] == 3  # no guided source call: PnP pins the source row anyway
    assert torch.equal(res.sample.latents[0:1], traj.latents[0])
