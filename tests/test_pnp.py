"""Plug-and-Play (feature and query/key injection): its defining properties on the tiny model."""

import pytest
import torch

from locedit import pipeline
from locedit.attention import BatchLayout, parse_site, unet_sites
from locedit.control.masactrl import block_order
from locedit.control.pnp import PlugAndPlay, injected_self_sites
from locedit.errors import LoceditError
from locedit.methods import PnPOptions

from test_masactrl import sd15_site_names

SRC = "a red square on the gray background"
TGT = "a blue circle on the gray background"
LAYOUT = BatchLayout((("target", "uncond"), ("source", "cond"), ("target", "cond")))


def test_injected_self_attention_is_the_codes_res_dict_on_sd():
    sites = [parse_site(n, 4) for n in sd15_site_names()]
    got = injected_self_sites(block_order(sites), sites)
    # pnp_utils.register_attention_control_efficient: res_dict = {1: [1, 2], 2: [0, 1, 2], 3: [0, 1, 2]}
    want = {f"up_blocks.{r}.attentions.{a}.transformer_blocks.0.attn1.processor"
            for r, blocks in {1: [1, 2], 2: [0, 1, 2], 3: [0, 1, 2]}.items() for a in blocks}
    assert got == want


def controller(feature_steps=2, attention_steps=1):
    ctrl = PlugAndPlay(feature_steps, attention_steps, 4, frozenset({"s"}), "up_blocks.1.resnets.1")
    ctrl.layout = LAYOUT
    ctrl.clock.set(0, 999, "sample")
    return ctrl


def test_both_target_rows_take_the_source_rows_queries_and_keys_not_values():
    ctrl = controller()
    q, k, v = (torch.randn(3, 2, 16, 8) for _ in range(3))
    q2, k2, v2 = ctrl.edit_qkv(q.clone(), k.clone(), v.clone(), None)
    for t in (0, 2):
        assert torch.equal(q2[t], q[1]) and torch.equal(k2[t], k[1])
    assert torch.equal(q2[1], q[1]) and torch.equal(v2, v)


def test_features_are_injected_in_the_window_only(bundle):
    ctrl = controller(feature_steps=2)
    [(module, hook)] = ctrl.feature_hooks(bundle.unet)
    assert module is bundle.unet.get_submodule("up_blocks.1.resnets.1").conv2
    out = torch.randn(3, 4, 8, 8)
    injected = hook(module, (None,), out)
    assert all(torch.equal(injected[t], out[1]) for t in (0, 2)) and torch.equal(injected[1], out[1])
    ctrl.clock.set(2, 500, "sample")
    assert hook(module, (None,), out) is None  # past the window: the output is left as it is


@pytest.fixture(scope="module")
def traj(bundle, image):
    return pipeline.invert(bundle, image, SRC, "ddim", num_steps=4)


def test_with_no_injection_the_target_is_plain_target_sampling(bundle, image, traj):
    res = pipeline.edit(bundle, None, SRC, TGT, method="pnp", trajectory=traj,
                        options=PnPOptions(feature_fraction=0.0, attention_fraction=0.0))
    # CFG against the scripts' negative prompt
    plain = pipeline.sample(bundle, traj, [TGT], branches=("target",), null_prompt=PnPOptions().negative_prompt)
    torch.testing.assert_close(res.sample.latents[1], plain.latents[0], rtol=0, atol=1e-5)
    # the source row reads the inversion at every step: it ends on the image latent
    assert torch.equal(res.sample.latents[0:1], traj.latents[0])
    # three rows a step: the source's unconditional row is never needed
    assert res.stats["edit_unet_calls"] == 4


def test_injection_changes_the_target_and_each_part_acts(bundle, traj):
    plain = pipeline.edit(bundle, None, SRC, TGT, method="pnp", trajectory=traj,
                          options=PnPOptions(feature_fraction=0.0, attention_fraction=0.0)).sample.latents[1]
    feats = pipeline.edit(bundle, None, SRC, TGT, method="pnp", trajectory=traj,
                          options=PnPOptions(feature_fraction=1.0, attention_fraction=0.0)).sample.latents[1]
    attn = pipeline.edit(bundle, None, SRC, TGT, method="pnp", trajectory=traj,
                         options=PnPOptions(feature_fraction=0.0, attention_fraction=1.0)).sample.latents[1]
    assert (feats - plain).abs().max() > 1e-3 and (attn - plain).abs().max() > 1e-3
    assert (feats - attn).abs().max() > 1e-3


def test_pnp_runs_on_every_inversion_and_restores_the_unet(bundle, image):
    before = dict(bundle.unet.attn_processors)
    conv = bundle.unet.get_submodule("up_blocks.1.resnets.1").conv2
    for inversion in ("ddim", "npi", "direct"):
        opts = PnPOptions(negative_prompt="") if inversion == "npi" else PnPOptions()
        res = pipeline.edit(bundle, image, SRC, TGT, method="pnp", inversion=inversion, num_steps=2, options=opts)
        assert torch.isfinite(res.edited).all()
    with pytest.raises(LoceditError, match="learned by null-text inversion: pass --pnp-negative ''"):
        pipeline.edit(bundle, image, SRC, TGT, method="pnp", inversion="null-text", num_steps=2)
    plain_cfg = pipeline.edit(bundle, image, SRC, TGT, method="pnp", inversion="ddim", num_steps=2,
                              options=PnPOptions(negative_prompt="")).sample.latents[1]
    negative = pipeline.edit(bundle, image, SRC, TGT, method="pnp", inversion="ddim", num_steps=2).sample.latents[1]
    assert (plain_cfg - negative).abs().max() > 1e-4  # the negative prompt acts
    assert dict(bundle.unet.attn_processors) == before and not conv._forward_hooks
    with pytest.raises(LoceditError, match="not a residual block"):
        pipeline.edit(bundle, image, SRC, TGT, method="pnp", inversion="ddim", num_steps=2,
                      options=PnPOptions(feature_block="up_blocks.9.resnets.0"))
    with pytest.raises(LoceditError, match="in \\[0, 1\\]"):
        PnPOptions(feature_fraction=1.5)
