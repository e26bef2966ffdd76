import math

import pytest
import torch

from locedit import pipeline
from locedit.attention import BatchLayout, controlled_attention, map_level, unet_sites
from locedit.errors import PromptError
from locedit.masks import Region
from locedit.guidance.locinv import (
    LocInvOptions,
    adjective_pairs,
    locinv_inversion,
    previous_token_pairs,
    prior_kind,
    threshold,
)
from locedit.guidance.loop import MapCapture, map_mask_from
from locedit.inversion import NullTextOptions

SRC = "a red square on the gray background"


@pytest.fixture(scope="module")
def seg_prior():
    m = torch.zeros(1, 1, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    m[0, 0] = (((yy - 28) ** 2 + (xx - 32) ** 2) < 14 ** 2).float()  # a disc: a segmentation, not a box
    return m


OPTS = LocInvOptions(max_inner=6, lr=5e-2, nti=NullTextOptions(inner_steps=1))


@pytest.fixture(scope="module")
def learned(bundle, image, seg_prior):
    before = bundle.token_embedding_table().weight.detach().clone()
    traj = locinv_inversion(bundle, bundle.encode_image(image), SRC, [Region("square", seg_prior)], 3,
                            pairs=[("red", "square")], options=OPTS)
    return traj, before


@pytest.fixture(scope="module")
def learned_unbound(bundle, image, seg_prior):
    """The same learning without adjective binding (no pairs given, adj_bind off: the default)."""
    return locinv_inversion(bundle, bundle.encode_image(image), SRC, [Region("square", seg_prior)], 3, options=OPTS)


def test_thresholds_follow_beta_exp_minus_i_over_alpha():
    assert threshold(0, 50, 0.7) == 0.7
    assert math.isclose(threshold(25, 25, 0.5), 0.5 / math.e)
    vals = [threshold(i, 50, 0.7) for i in range(50)]
    assert all(a > b for a, b in zip(vals, vals[1:]))


def test_losses_under_their_thresholds_stop_learning(bundle, image, seg_prior):
    high = (50.0, 10.0, 1.0)  # thresholds of 10: every loss is already below
    opts = LocInvOptions(max_inner=5, sim=high, ov=high, adj=high, nti=NullTextOptions(inner_steps=0))
    traj = locinv_inversion(bundle, bundle.encode_image(image), SRC, [Region("square", seg_prior)], 2, options=opts)
    assert traj.stats["iterations"] == [0, 0]
    init = bundle.token_embedding_table().weight[bundle.tokenizer(SRC).input_ids[3]]
    assert torch.equal(traj.token_vectors["square"][0, 0], init.float())


def test_only_the_noun_vectors_are_learned(bundle, learned):
    traj, before = learned
    assert torch.equal(bundle.token_embedding_table().weight, before)  # the table never changes
    assert set(traj.token_vectors) == {"square"} and traj.token_vectors["square"].shape[0] == 3
    init = before[bundle.tokenizer(SRC).input_ids[3]].float()
    assert not torch.equal(traj.token_vectors["square"][-1, 0], init)
    assert traj.stats["prior"] == "seg" and traj.stats["pairs_from"] == "user"


def _noun_and_adj_maps(bundle, traj, vec, z, step):
    sched = bundle.schedule(traj.num_steps)
    level = map_level(unet_sites(bundle.unet))
    cap = MapCapture(level, branch="source")
    cap.layout = BatchLayout.single(("source",))
    cap.clock.set(step, sched.timesteps[step], "guide")
    with controlled_attention(bundle.unet, cap), torch.no_grad():
        cap.begin()
        bundle.predict_eps(z, sched.timesteps[step], sched.alphas[step], bundle.encode_text_with_tokens(SRC, {3: vec}))
        return cap.word_map([3]), cap.word_map([2])


def test_learned_tokens_raise_iou_with_the_prior_and_bind_the_adjective(bundle, learned, learned_unbound, seg_prior):
    traj, before = learned
    z = traj.latents[-1]
    init = before[bundle.tokenizer(SRC).input_ids[3]].float()
    prior = map_mask_from(seg_prior, 8) > 0.5
    k = int(prior.sum())

    def iou(m):
        top = torch.zeros_like(prior)
        top[m.topk(k).indices] = True
        return (top & prior).sum().item() / (top | prior).sum().item()

    noun0, _ = _noun_and_adj_maps(bundle, traj, init, z, 0)
    noun1, adj1 = _noun_and_adj_maps(bundle, traj, traj.token_vectors["square"][0, 0], z, 0)
    assert iou(noun1) > iou(noun0)
    assert learned_unbound.stats["pairs"] == []
    noun2, adj2 = _noun_and_adj_maps(bundle, traj, learned_unbound.token_vectors["square"][0, 0], z, 0)
    cos = torch.nn.functional.cosine_similarity
    assert cos(adj1, noun1, dim=0) > cos(adj2, noun2, dim=0)  # binding pulls the noun map to the adjective


def test_pair_sources():
    assert previous_token_pairs("a red square on the gray background", ["square", "background"]) == [
        ("red", "square"), ("gray", "background")]
    assert previous_token_pairs("the square", ["square"]) == []
    pairs, source = adjective_pairs("a red square", ["square"], [("red", "square")])
    assert source == "user"
    pairs, source = adjective_pairs("a red square", ["square"], [], "previous")
    assert pairs == [("red", "square")] and source == "previous"


def test_prior_kind_tells_boxes_from_masks(seg_prior):
    box = torch.zeros(1, 1, 64, 64)
    box[..., 10:30, 5:40] = 1
    assert prior_kind([Region("a", box)]) == "box"
    assert prior_kind([Region("a", seg_prior)]) == "seg"


def test_locinv_edit_runs_p2p_with_learned_tokens(bundle, learned):
    traj, _ = learned
    tgt = SRC.replace("red", "blue")
    from locedit.methods import P2P, EditRequest

    def controller():
        return P2P.build(bundle, EditRequest(SRC, tgt, num_steps=traj.num_steps), P2P.Options()).controller

    out = pipeline.sample(bundle, traj, [SRC, tgt], controller=controller())
    plain = pipeline.sample(bundle, traj.__class__(**{**traj.__dict__, "token_vectors": {}}), [SRC, tgt],
                            controller=controller())
    assert not torch.allclose(out.latents, plain.latents)  # the learned tokens are used


def test_region_word_must_be_in_the_source_prompt(bundle, image, seg_prior):
    with pytest.raises(PromptError, match="dog"):
        locinv_inversion(bundle, bundle.encode_image(image), SRC, [Region("dog", seg_prior)], 2)


def test_the_codes_pair_rule_binds_whatever_token_precedes_the_noun(bundle):
    """Issue 32: the authors' code takes the token before the noun, 'a' and 'with' too (pair_source
    "preceding", --preset official); locedit's "previous" skips articles and prepositions."""
    from locedit.diffusion.text import token_positions
    from locedit.guidance.options import LocInvOptions
    from locedit.options import preset

    tok = bundle.tokenizer
    for prompt, nouns in (("a square with a circle", ["square", "circle"]),
                          ("a red square on the gray background", ["square", "background"])):
        ids = tok(prompt).input_ids
        code = [(tok.decode([ids[token_positions(tok, prompt, n)[0] - 1]]).strip(), n) for n in nouns]
        assert adjective_pairs(prompt, nouns, [], "preceding") == (code, "preceding")
    assert adjective_pairs("a square with a circle", ["square", "circle"], [], "previous") == ([], "previous")
    assert preset(LocInvOptions, "official").pair_source == "preceding"
