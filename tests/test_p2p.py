import pytest
import torch

from locedit import pipeline
from locedit.attention import StepClock, parse_site
from locedit.control import LocalBlendOptions, P2POptions, Prompt2Prompt, refine_mapping
from locedit.errors import LoceditError, MaskError, PromptError
from locedit.methods import P2P, EditRequest, P2PEditOptions

SRC = "a red square on the gray background"


def p2p(bundle, source, target, steps, options=P2POptions(), mask=None, blend_words=None, blend=LocalBlendOptions()):
    """The P2P method's controller, checked as the pipeline checks it."""
    request = EditRequest(source, target, mask=mask, blend_words=blend_words, num_steps=steps)
    opts = P2PEditOptions(options, blend)
    P2P.check(bundle, request, opts)
    return P2P.build(bundle, request, opts).controller


@pytest.fixture(scope="module")
def ddim_traj(bundle, image):
    return pipeline.invert(bundle, image, SRC, "ddim", num_steps=6)


def test_replace_with_identical_prompts_reproduces_the_reconstruction(bundle, ddim_traj):
    rec = pipeline.reconstruct(bundle, ddim_traj)
    ctrl = p2p(bundle, SRC, SRC, 6, P2POptions(mode="replace", self_replace=0.5))
    out = pipeline.sample(bundle, ddim_traj, [SRC, SRC], controller=ctrl)
    torch.testing.assert_close(out.latents[0:1], rec.latents, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.latents[1:2], rec.latents, rtol=1e-4, atol=1e-4)


def test_replace_changes_the_target_when_the_prompt_changes(bundle, ddim_traj):
    ctrl = p2p(bundle, SRC, SRC.replace("red", "blue"), 6, P2POptions(mode="replace"))
    out = pipeline.sample(bundle, ddim_traj, [SRC, SRC.replace("red", "blue")], controller=ctrl)
    assert (out.latents[0] - out.latents[1]).abs().max() > 1e-3


def test_user_mask_blend_keeps_outside_equal_to_source(bundle, ddim_traj):
    mask = torch.zeros(1, 1, 64, 64)
    mask[:, :, 16:40, 20:44] = 1
    tgt = SRC.replace("red", "blue")
    ctrl = p2p(bundle, SRC, tgt, 6, P2POptions(mode="refine"), mask=mask)
    out = pipeline.sample(bundle, ddim_traj, [SRC, tgt], controller=ctrl)
    latent_mask = out.blend_mask[0, 0]
    outside = latent_mask == 0
    assert outside.any() and (~outside).any()
    assert torch.equal(out.latents[1][:, outside], out.latents[0][:, outside])
    assert (out.latents[1][:, ~outside] - out.latents[0][:, ~outside]).abs().max() > 1e-4


def test_attention_blend_mask_from_words(bundle, ddim_traj):
    tgt = SRC.replace("red", "blue")
    ctrl = p2p(bundle, SRC, tgt, 6, blend_words=("square", "square"), blend=LocalBlendOptions(threshold=0.3))
    out = pipeline.sample(bundle, ddim_traj, [SRC, tgt], controller=ctrl)
    m = out.blend_mask
    assert m.shape == (1, 1, 16, 16) and set(m.unique().tolist()) <= {0.0, 1.0} and m.sum() > 0
    outside = m[0, 0] == 0
    assert torch.equal(out.latents[1][:, outside], out.latents[0][:, outside])


def test_refine_alignment_keeps_new_words_own_maps(bundle):
    tok = bundle.tokenizer
    src, tgt = "a cat on the grass", "a big cat on the grass"
    matrix, alphas = refine_mapping(tok(src).input_ids, tok(tgt).input_ids, bundle.max_tokens)
    # target tokens: <s> a big cat on the grass </s>; "big" (position 2) is new
    assert alphas[2] == 0
    assert matrix[2, 3] == 1 and alphas[3] == 1  # "cat" takes the source "cat"
    assert matrix[6, 7] == 1 and alphas[7] == 1  # end token


def test_word_swap_with_different_word_counts_suggests_refine(bundle):
    with pytest.raises(PromptError, match="refine"):
        p2p(bundle, "a cat", "a big cat", 5, P2POptions(mode="replace"))


def test_blend_words_must_be_in_their_prompts(bundle):
    with pytest.raises(PromptError, match="zebra"):
        p2p(bundle, "a cat", "a dog", 5, blend_words=("zebra", "dog"))


def test_reweight_scales_the_target_word_inside_the_window(bundle):
    src, tgt = "a red cat", "a red cat"
    ctrl = Prompt2Prompt(P2POptions(mode="reweight", reweight=(("red", 3.0),)), bundle.tokenizer, src, tgt,
                         num_steps=10, map_level=1, clock=StepClock(num_steps=10))
    site = parse_site("up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", 2)
    probs = torch.rand(4, 2, 16, bundle.max_tokens).softmax(-1)
    ctrl.clock.set(0, 900)
    out = ctrl.edit_probs(probs, site)
    red = 2
    torch.testing.assert_close(out[3, :, :, red], 3.0 * probs[2, :, :, red])
    torch.testing.assert_close(out[3, :, :, 1], probs[2, :, :, 1])
    assert torch.equal(out[:3], probs[:3])  # only the target's conditional row changes
    ctrl.clock.set(9, 50)  # past cross_replace = 0.8
    assert torch.equal(ctrl.edit_probs(probs, site), probs)


def test_options_are_validated():
    with pytest.raises(LoceditError, match="cross_replace"):
        P2POptions(cross_replace=1.5)
    with pytest.raises(LoceditError, match="reweight"):
        P2POptions(mode="reweight")
    with pytest.raises(LoceditError, match="proximal"):
        pipeline.EditOptions(inversion_guidance_t=400)


def test_empty_or_missized_mask_is_refused(bundle):
    with pytest.raises(MaskError, match="empty"):
        p2p(bundle, "a cat", "a dog", 5, mask=torch.zeros(1, 1, 64, 64))
    with pytest.raises(MaskError, match="32x32"):
        p2p(bundle, "a cat", "a dog", 5, mask=torch.ones(1, 1, 32, 32))


def test_spdinv_editing_extras_change_the_edit(bundle, ddim_traj):
    tgt = SRC.replace("red", "blue")
    base = pipeline.sample(bundle, ddim_traj, [SRC, tgt], pipeline.EditOptions(),
                           p2p(bundle, SRC, tgt, 6))
    extra = pipeline.sample(bundle, ddim_traj, [SRC, tgt],
                            pipeline.EditOptions(npi_null=True, proximal_quantile=0.7, inversion_guidance_t=1000),
                            p2p(bundle, SRC, tgt, 6))
    assert not torch.allclose(base.latents, extra.latents)
    # with the threshold at quantile 0.7, at least 70% of the guidance is zeroed, and inversion
    # guidance below t=1000 pins those latents to the trajectory: the source row ends near z0
    err_base = (base.latents[0] - ddim_traj.latents[0][0]).abs().mean()
    err_extra = (extra.latents[0] - ddim_traj.latents[0][0]).abs().mean()
    assert err_extra < err_base


def test_fit_pads_odd_sizes_and_returns_the_input_size():
    from locedit.imaging import Fit

    ramp = torch.linspace(0, 1, 63)
    x = torch.stack([ramp.expand(47, 63), ramp.flip(0).expand(47, 63), torch.full((47, 63), 0.3)])[None]
    fit = Fit.plan(47, 63, 64, "pad")
    y = fit.to_model(x)
    assert y.shape == (1, 3, 64, 64)
    back = fit.from_model(y)
    assert back.shape == (1, 3, 47, 63)
    assert (back - x).abs().mean() < 0.02  # a resize round trip of the same pixels, not another crop
    m = torch.zeros(1, 1, 47, 63)
    m[..., 10:20, 30:40] = 1
    mm = fit.to_model(m, binary=True)
    assert set(mm.unique().tolist()) == {0.0, 1.0}


def test_recorded_attention_of_a_plain_p2p_edit(bundle, ddim_traj):
    # the engine comes with its layout set; the recorder chained after it must see that layout too
    tgt = SRC.replace("red", "blue")
    res = pipeline.edit(bundle, None, SRC, tgt, trajectory=ddim_traj, record_words=("blue", "square"))
    maps = res.stats["attention"]
    assert set(maps) == {"blue", "square"}
    assert all(m.ndim == 2 and m.sum() > 0 for m in maps.values())


def test_a_word_swap_takes_reweighting_as_the_authors_code_allows(bundle):
    """Issue 32: the authors' AttentionReweight(prev_controller=AttentionReplace) scales the swapped
    maps: target = (source maps @ M_replace) * equalizer inside the window (alpha_words 1)."""
    from locedit.control.alignment import replace_matrix

    src, tgt = "a red cat", "a blue cat"
    ctrl = Prompt2Prompt(P2POptions(mode="replace", reweight=(("blue", 2.5),)), bundle.tokenizer, src, tgt,
                         num_steps=10, map_level=1, clock=StepClock(num_steps=10))
    site = parse_site("up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", 2)
    probs = torch.rand(4, 2, 16, bundle.max_tokens).softmax(-1)
    ctrl.clock.set(0, 900)
    equalizer = torch.ones(bundle.max_tokens)
    equalizer[2] = 2.5  # "blue"
    expected = (probs[2] @ replace_matrix(bundle.tokenizer, src, tgt, bundle.max_tokens)) * equalizer
    torch.testing.assert_close(ctrl.edit_probs(probs, site)[3], expected)
    with pytest.raises(LoceditError, match="--reweight needs --p2p reweight"):
        P2POptions(mode="refine", reweight=(("blue", 2.0),))
