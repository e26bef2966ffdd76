import pytest
import torch
from diffusers.models.attention_processor import AttnProcessor

from locedit import pipeline
from locedit.attention import (
    AttentionController,
    BatchLayout,
    MapRequest,
    SiteSelector,
    TokenMapStore,
    controlled_attention,
    cross_maps_selector,
    map_level,
    parse_site,
    unet_sites,
)


def _eps(bundle, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 4, 16, 16, generator=g)
    emb = bundle.encode_text(["a red cat", "a blue dog"])
    s = bundle.schedule(10)
    return bundle.predict_eps(z, s.timesteps[2], s.alphas[2], emb)


def test_sd_processor_names_parse_to_kind_place_and_level():
    name = "up_blocks.1.attentions.2.transformer_blocks.0.attn2.processor"
    s = parse_site(name, num_blocks=4)
    assert (s.kind, s.place, s.block, s.level) == ("cross", "up", 1, 2)
    assert s.map_side(64) == 16
    assert parse_site("down_blocks.2.attentions.1.transformer_blocks.0.attn1.processor", 4).level == 2
    assert parse_site("mid_block.attentions.0.transformer_blocks.0.attn2.processor", 4).level == 3
    assert parse_site("down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor", 4).kind == "self"


def test_sd_layout_selects_the_five_16x16_cross_layers():
    # SD 1.x: cross-attention in down 0-2 (2 layers each), mid (1), up 1-3 (3 layers each)
    names = [f"down_blocks.{b}.attentions.{a}.transformer_blocks.0.attn{k}.processor"
             for b in range(3) for a in range(2) for k in (1, 2)]
    names += [f"mid_block.attentions.0.transformer_blocks.0.attn{k}.processor" for k in (1, 2)]
    names += [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn{k}.processor"
              for b in range(1, 4) for a in range(3) for k in (1, 2)]
    sites = [parse_site(n, 4) for n in names]
    sel = cross_maps_selector(sites)
    chosen = [s for s in sites if sel(s)]
    assert len(chosen) == 5 and {s.level for s in chosen} == {2}
    assert map_level(sites) == 2


def test_a_mid_block_alone_at_a_level_does_not_make_it_the_map_level():
    # the shapes v2 UNet: cross-attention in down/up blocks at 16x16 and 8x8 latents, an attention-free
    # third level whose only cross-attention is the mid block's (4x4)
    names = [f"down_blocks.{b}.attentions.{a}.transformer_blocks.0.attn{k}.processor"
             for b in range(2) for a in range(2) for k in (1, 2)]
    names += [f"mid_block.attentions.0.transformer_blocks.0.attn{k}.processor" for k in (1, 2)]
    names += [f"up_blocks.{b}.attentions.{a}.transformer_blocks.0.attn{k}.processor"
              for b in (1, 2) for a in range(3) for k in (1, 2)]
    sites = [parse_site(n, 3) for n in names]
    assert {s.level for s in sites if s.place == "mid"} == {2}
    assert map_level(sites) == 1  # the deepest level the down and up blocks attend at (8x8 latents)
    assert [s for s in sites if cross_maps_selector(sites)(s)]  # maps to average exist there


def test_tiny_model_sites(bundle):
    sites = unet_sites(bundle.unet)
    assert len(sites) == len(bundle.unet.attn_processors)
    assert {s.level for s in sites if s.kind == "cross"} == {0, 1}
    assert map_level(sites) == 1  # no level 2 here: the deepest cross level


def test_identity_controller_is_bitwise_unchanged(bundle):
    before = _eps(bundle)
    with controlled_attention(bundle.unet, AttentionController()):
        during = _eps(bundle)
    assert torch.equal(before, during)


class _Rewrite(AttentionController):
    """Wants every site, rewrites nothing: exercises the explicit-probabilities path."""

    def wants(self, site):
        return True

    def edit_probs(self, probs, site):
        return probs.clone()


class _ScoresToo(_Rewrite):
    def edit_scores(self, scores, site):
        return scores + 0.0


def test_explicit_path_equals_diffusers_attnprocessor(bundle):
    original = dict(bundle.unet.attn_processors)
    try:
        bundle.unet.set_attn_processor(AttnProcessor())
        reference = _eps(bundle)
        with controlled_attention(bundle.unet, _Rewrite(layout=BatchLayout.single(("a", "b")))):
            explicit = _eps(bundle)
        with controlled_attention(bundle.unet, _ScoresToo(layout=BatchLayout.single(("a", "b")))):
            via_scores = _eps(bundle)
    finally:
        bundle.unet.set_attn_processor(original)
    assert torch.equal(reference, explicit)
    torch.testing.assert_close(reference, via_scores, rtol=1e-5, atol=1e-6)


def test_processors_restored_after_exception(bundle):
    original = dict(bundle.unet.attn_processors)

    class Boom(AttentionController):
        def wants(self, site):
            return True

        def edit_probs(self, probs, site):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        with controlled_attention(bundle.unet, Boom()):
            _eps(bundle)
    after = bundle.unet.attn_processors
    assert set(after) == set(original) and all(after[k] is original[k] for k in original)


def test_unselected_sites_keep_their_processor(bundle):
    original = dict(bundle.unet.attn_processors)
    sel = SiteSelector(kinds=frozenset({"cross"}))
    with controlled_attention(bundle.unet, AttentionController(), sel) as sites:
        now = bundle.unet.attn_processors
        assert sites and all(s.kind == "cross" for s in sites)
        for s in unet_sites(bundle.unet):
            assert (now[s.name] is original[s.name]) == (s.kind == "self")


class _Recorder(AttentionController):
    def __init__(self):
        super().__init__()
        self.seen = []

    def wants(self, site):
        if site.kind == "cross":
            self.seen.append((self.clock.phase, self.clock.step))
        return False


def test_step_clock_comes_from_the_loop_not_call_counts(bundle, image):
    traj = pipeline.invert(bundle, image, "a red cat", "ddim", num_steps=4)
    rec = _Recorder()
    pipeline.sample(bundle, traj, ["a red cat", "a blue cat"], controller=rec)
    n_cross = sum(1 for s in unet_sites(bundle.unet) if s.kind == "cross")
    assert [s for _, s in rec.seen] == [i for i in range(4) for _ in range(n_cross)]


def test_store_keeps_only_requested_tokens(bundle):
    store = TokenMapStore({"w": MapRequest("b", tokens=(2, 3))})
    sel = cross_maps_selector(unet_sites(bundle.unet))

    class Keep(AttentionController):
        def wants(self, site):
            return True

        def edit_probs(self, probs, site):
            store.add(probs, site, self.layout)
            return probs

    with controlled_attention(bundle.unet, Keep(layout=BatchLayout.single(("a", "b"))), sel):
        _eps(bundle)
    maps = store.maps("w")
    assert maps.shape == (2, 8, 8)  # level-1 maps of a 16x16 latent
    assert not maps.requires_grad
    assert torch.all(maps >= 0) and torch.all(maps <= 1)
