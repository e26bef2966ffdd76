"""MasaCtrl (mutual self-attention): its defining properties on the tiny model."""

import pytest
import torch

from locedit import pipeline
from locedit.attention import AttentionController, BatchLayout, Chain, parse_site, unet_sites
from locedit.control.masactrl import MutualSelfAttention, block_order
from locedit.errors import LoceditError

SRC = "a red square on the gray background"
TGT = "a blue circle on the gray background"


def sd15_site_names():
    """SD 1.x's attention processors, in the UNet's order."""
    names = []
    for b in range(3):
        names += [f"down_blocks.{b}.attentions.{a}.transformer_blocks.0.attn{k}.processor" for a in range(2) for k in (1, 2)]
    names += [f"mid_block.attentions.0.transformer_blocks.0.attn{k}.processor" for k in (1, 2)]
    for b in range(1, 4):
        names += [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn{k}.processor" for a in range(3) for k in (1, 2)]
    return names


def test_blocks_are_counted_in_forward_order_as_the_code_counts_them():
    names = sd15_site_names()
    order = block_order([parse_site(n, 4) for n in names])
    # the code: the n-th attention call of a forward belongs to block n // 2
    assert [order[n] for n in names] == [i // 2 for i in range(len(names))]
    assert max(order.values()) == 15 and order["mid_block.attentions.0.transformer_blocks.0.attn1.processor"] == 6
    later = {n.split(".attentions")[0] for n in names if order[n] >= 10}
    assert later == {"up_blocks.2", "up_blocks.3"}  # L = 10: the decoder's last six blocks


def test_default_layer_is_ten_of_sd_sixteen_blocks_and_the_same_share_elsewhere():
    from locedit.methods.masactrl import MasaCtrlOptions

    assert MasaCtrlOptions().layer(16) == 10  # the paper's and the code's L on SD 1.x
    assert MasaCtrlOptions().layer(70) == 44  # run_synthesis_sdxl.py's first setting (44 of SDXL's 70)
    assert MasaCtrlOptions(start_layer=3).layer(70) == 3


def test_target_rows_take_the_source_keys_and_values_in_both_halves():
    ctrl = MutualSelfAttention(0, 0, 10, {"s": 0})
    q, k, v = (torch.randn(4, 2, 16, 8) for _ in range(3))  # [src uncond, tgt uncond, src cond, tgt cond]
    q2, k2, v2 = ctrl.edit_qkv(q.clone(), k.clone(), v.clone(), None)
    assert torch.equal(q2, q)
    for s, t in ((0, 1), (2, 3)):
        assert torch.equal(k2[t], k[s]) and torch.equal(v2[t], v[s])
        assert torch.equal(k2[s], k[s]) and torch.equal(v2[s], v[s])


class Recorder(AttentionController):
    """Keeps the latents after every step (changes nothing)."""

    def __init__(self):
        super().__init__(layout=BatchLayout.cfg(("source", "target")))
        self.latents = []

    def after_step(self, latents):
        self.latents.append(latents.clone())
        return latents


@pytest.fixture(scope="module")
def traj(bundle, image):
    return pipeline.invert(bundle, image, SRC, "ddim", num_steps=4)


def run(bundle, traj, ctrl=None):
    rec = Recorder()
    pipeline.sample(bundle, traj, [SRC, TGT], controller=Chain([ctrl, rec]) if ctrl else rec)
    return rec.latents


def masactrl(bundle, step, layer, masks=None):
    return MutualSelfAttention(step, layer, 4, block_order(unet_sites(bundle.unet)), masks)


def test_before_step_s_it_is_plain_sampling_and_the_source_never_changes(bundle, traj):
    plain = run(bundle, traj)
    edited = run(bundle, traj, masactrl(bundle, 2, 0))
    for i in range(2):  # steps 0 and 1: bitwise the plain two-branch sampling
        assert torch.equal(edited[i], plain[i])
    assert not torch.equal(edited[3][1], plain[3][1])  # from step 2 on, the target changes
    for i in range(4):  # the source branch only ever reads itself (explicit vs fused attention: float rounding)
        torch.testing.assert_close(edited[i][0], plain[i][0], rtol=0, atol=1e-5)
    blocks = max(block_order(unet_sites(bundle.unet)).values()) + 1
    assert all(torch.equal(a, b) for a, b in zip(run(bundle, traj, masactrl(bundle, 0, blocks)), plain))


def test_mask_guided_attention_with_one_side_everywhere_is_plain_masactrl(bundle, traj):
    side = bundle.image_size // bundle.vae_scale
    ones = torch.ones(1, 1, side, side)
    half = torch.zeros(1, 1, side, side)
    half[..., :, : side // 2] = 1
    plain = run(bundle, traj, masactrl(bundle, 0, 0))
    for everywhere in (ones, torch.zeros_like(ones)):  # every query and key on the same side: no key excluded
        masked = run(bundle, traj, masactrl(bundle, 0, 0, (everywhere, everywhere)))
        torch.testing.assert_close(masked[-1], plain[-1], rtol=0, atol=2e-4)  # logits path: float rounding
    split = run(bundle, traj, masactrl(bundle, 0, 0, (half, half)))
    assert (split[-1][1] - plain[-1][1]).abs().max() > 1e-2


def test_masactrl_through_the_pipeline_and_its_checks(bundle, image):
    from locedit.methods.masactrl import MasaCtrlOptions

    res = pipeline.edit(bundle, image, SRC, TGT, method="masactrl", inversion="ddim", num_steps=3,
                        options=MasaCtrlOptions(start_step=1, start_layer=0))
    assert res.edited.shape == image.shape and torch.isfinite(res.edited).all()
    with pytest.raises(LoceditError, match="past the model's last transformer block"):
        pipeline.edit(bundle, image, SRC, TGT, method="masactrl", inversion="ddim", num_steps=3,
                      options=MasaCtrlOptions(start_step=1, start_layer=99))
    with pytest.raises(LoceditError, match="past the last of 3 steps"):
        pipeline.edit(bundle, image, SRC, TGT, method="masactrl", inversion="ddim", num_steps=3,
                      options=MasaCtrlOptions(start_layer=0))
    with pytest.raises(LoceditError, match="empty or covers the whole image"):
        pipeline.edit(bundle, image, SRC, TGT, method="masactrl", inversion="ddim", num_steps=3,
                      options=MasaCtrlOptions(start_step=1, start_layer=0), mask=torch.ones(1, 1, 64, 64))
    with pytest.raises(LoceditError, match="--blend-words is not used by --method masactrl"):
        pipeline.edit(bundle, image, SRC, TGT, method="masactrl", inversion="ddim", num_steps=3,
                      options=MasaCtrlOptions(start_step=1, start_layer=0), blend_words=("red", "blue"))


# ---- masks from cross-attention (MutualSelfAttentionControlMaskAuto) --------------------------------------
def test_auto_masks_mix_the_codes_two_masked_attentions_by_the_thresholded_target_map():
    from locedit.control.masactrl import MutualSelfAttentionAuto

    torch.manual_seed(0)
    side, heads = 4, 2
    ctrl = MutualSelfAttentionAuto(0, 0, 10, {"s": 0}, [1], [1], map_level=1, threshold=0.3)
    ctrl.layout = BatchLayout.cfg(("source", "target"))
    ctrl.clock.set(0, 999, "sample")
    src_map, tgt_map = torch.rand(side, side), torch.rand(side, side)
    ctrl._sum, ctrl._layers = torch.stack([src_map, tgt_map]) * 2, 2  # two layers seen in this step
    sim = torch.randn(4, heads, side * side, side * side)
    out = ctrl.edit_probs(sim.softmax(-1), parse_site("up_blocks.1.attentions.0.transformer_blocks.0.attn1.processor", 2))
    # the code: min-max normalise, threshold the source map for the keys, two masked softmaxes with
    # finfo.min, blended per query by the target map thresholded at the same value
    # (MutualSelfAttentionControlMaskAuto.forward: spatial_mask[spatial_mask >= thres] = 1, else 0)
    norm = lambda m: (m - m.min()) / (m.max() - m.min())  # noqa: E731
    keys = (norm(src_map).flatten() >= 0.3).float()
    w = (norm(tgt_map).flatten()[:, None] >= 0.3).float()
    assert 0 < w.sum() < w.numel()  # both outputs are used
    low = torch.finfo(sim.dtype).min
    for s, t in ((0, 1), (2, 3)):
        fg = (sim[t] + (1 - keys) * low).softmax(-1)
        bg = (sim[t] + keys * low).softmax(-1)
        torch.testing.assert_close(out[t], w * fg + (1 - w) * bg, rtol=0, atol=1e-6)
        torch.testing.assert_close(out[s], sim[s].softmax(-1))  # the source rows are untouched
    ctrl.after_step(None)
    assert ctrl._sum is None  # maps are per step: the next step starts without a mask


def test_auto_masks_through_the_pipeline_and_their_checks(bundle, image):
    from locedit.methods.masactrl import MasaCtrlOptions

    src, tgt = "a red square on the gray background", "a red circle on the gray background"
    traj = pipeline.invert(bundle, image, src, "ddim", num_steps=3)
    plain = pipeline.edit(bundle, None, src, tgt, method="masactrl", trajectory=traj,
                          options=MasaCtrlOptions(start_step=0, start_layer=0))
    auto = pipeline.edit(bundle, None, src, tgt, method="masactrl", trajectory=traj,
                         options=MasaCtrlOptions(start_step=0, start_layer=0, auto_word="red"))
    assert (auto.sample.latents[1] - plain.sample.latents[1]).abs().max() > 1e-4
    # the source is untouched (explicit vs fused attention where the maps are read: float rounding)
    torch.testing.assert_close(auto.sample.latents[0], plain.sample.latents[0], rtol=0, atol=1e-4)
    with pytest.raises(LoceditError, match="not with --mask"):
        pipeline.edit(bundle, None, src, tgt, method="masactrl", trajectory=traj, mask=torch.ones(1, 1, 64, 64),
                      options=MasaCtrlOptions(start_step=0, auto_word="red"))
    with pytest.raises(LoceditError):  # the word must be in both prompts
        pipeline.edit(bundle, None, src, tgt, method="masactrl", trajectory=traj,
                      options=MasaCtrlOptions(start_step=0, auto_word="square"))
    pair = pipeline.edit(bundle, None, src, tgt, method="masactrl", trajectory=traj,  # a word per prompt
                         options=MasaCtrlOptions(start_step=0, start_layer=0, auto_word="square:circle"))
    assert (pair.sample.latents[1] - auto.sample.latents[1]).abs().max() > 1e-5
    with pytest.raises(LoceditError, match="needs --masactrl-auto"):
        pipeline.edit(bundle, None, src, tgt, method="masactrl", trajectory=traj,
                      options=MasaCtrlOptions(start_step=0, auto_threshold=0.2))
