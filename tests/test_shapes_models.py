"""The shapes models' code paths (gates, IP2P loop) on tiny random stand-ins, and the bundled
models themselves when they are installed."""

import pytest
import torch

from locedit.diffusion import load_model
from locedit.diffusion.loading import BUNDLED_DIR
from locedit.errors import LoceditError
from locedit.instruct import instruct_edit
from locedit.world import gates as G


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
    i = G.gate_instruct(tiny_instruct, n=2, steps=2)
    assert set(i) >= {"instruct_oracle", "instruct_outside_psnr"}


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


@pytest.mark.skipif(not (BUNDLED_DIR / "shapes").is_dir(), reason="bundled shapes model not built yet")
def test_bundled_shapes_model_loads_offline_and_generates():
    from locedit import pipeline

    b = load_model("shapes")
    z = pipeline.generate(b, ["a red circle on a gray background"], num_steps=3, generator=torch.Generator().manual_seed(0))
    assert b.decode_latents(z).shape == (1, 3, 64, 64)
