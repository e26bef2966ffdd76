import math

import pytest
import torch

from locedit import pipeline
from locedit.attention import BatchLayout, controlled_attention
from locedit.guidance import losses as L

SRC = "a red square on the gray background"
TGT = "a blue square on the gray background"


@pytest.fixture(scope="module")
def setup(bundle, image):
    traj = pipeline.invert(bundle, image, SRC, "ddim", num_steps=6)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:40, 20:44] = 1
    return traj, mask


# ---- losses by hand -----------------------------------------------------------------------------
def test_token_ratio_by_hand():
    # one layer, one head, 4 pixels, 3 token positions; the edit word is position 1
    a = torch.tensor([[[0.2, 0.5, 0.3], [0.1, 0.2, 0.5], [0.6, 0.0, 0.4], [0.3, 0.1, 0.6]]])
    m = torch.tensor([1.0, 1.0, 0.0, 0.0])
    # ratios inside: 0.5/1.0 = 0.5, 0.2/0.8 = 0.25 -> mean 0.375 -> (1 - 0.375)^2
    assert math.isclose(L.token_ratio_loss([a], [1], m).item(), 0.625 ** 2, rel_tol=1e-6)


def test_spatial_ratio_by_hand():
    a = torch.tensor([[[0.0, 0.4], [0.0, 0.1], [0.0, 0.3], [0.0, 0.2]]])  # word = position 1
    m = torch.tensor([1.0, 0.0, 1.0, 0.0])
    r = 0.7
    assert math.isclose(L.spatial_ratio_loss([a], [1], m, lam=3.0).item(), 3 * (1 - r) - r, rel_tol=1e-6)
    assert math.isclose(L.with_negative(torch.tensor(2.0), torch.tensor(0.5), 1.0, 2.0).item(), 1.0)


def test_oal_by_hand_and_nonzero_gradient():
    maps = torch.tensor([[0.5, 0.25]], requires_grad=True)
    masks = torch.tensor([[1.0, 0.0]])
    # BCE(maps) = -(log 0.5 + log 0.75)/2 ; peak = [1, 0.5]: BCE = -(log 1 + log 0.5)/2
    expected = -(math.log(0.5) + math.log(0.75)) / 2 - (math.log(1 - L.PROB_EPS) + math.log(0.5)) / 2
    loss = L.object_alignment_loss(maps, masks)
    assert math.isclose(loss.item(), expected, rel_tol=1e-5)
    loss.backward()
    assert maps.grad.abs().sum() > 0
    # the authors' bug: uniform maps 1/heads everywhere -> their gradient through the peak term vanishes
    flat = torch.full((1, 4), 0.125, requires_grad=True)
    assert L.object_alignment_loss(flat, torch.tensor([[1.0, 1.0, 0.0, 0.0]])).item() > 0


def test_oal_gradient_is_exact_in_float32_when_the_peak_is_outside_the_mask():
    # the peak pixel's normalised value is exactly 1; a clamp bound that rounds to 1.0 in float32
    # let BCE's ~1e12 gradient multiply two cancelling terms there, so the float32 gradient was
    # noise (guidance then climbed the loss). It must agree with the float64 one.
    g = torch.Generator().manual_seed(0)
    maps = torch.rand(2, 64, generator=g) * 0.2
    masks = torch.zeros(2, 64)
    masks[:, :16] = 1
    maps[:, 40] = 0.5  # the peak, outside the mask
    grads = []
    for dtype in (torch.float32, torch.float64):
        x = maps.to(dtype).requires_grad_(True)
        (grad,) = torch.autograd.grad(L.object_alignment_loss(x, masks.to(dtype)), x)
        grads.append(grad.double())
    assert torch.allclose(grads[0], grads[1], rtol=1e-3, atol=1e-4)
    # and a small step against it lowers the loss
    x = maps.clone().requires_grad_(True)
    loss = L.object_alignment_loss(x, masks)
    (grad,) = torch.autograd.grad(loss, x)
    assert L.object_alignment_loss(maps - 1e-4 * grad, masks) < loss


def test_locinv_losses_by_hand():
    a = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    s = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert math.isclose(L.similarity_loss_seg(a, s).item(), 1 - 1 / math.sqrt(2), rel_tol=1e-6)
    assert math.isclose(L.similarity_loss_box(a, s).item(), 1 / math.sqrt(2) / math.sqrt(3), rel_tol=1e-6)
    assert math.isclose(L.overlap_loss(a, s).item(), 0.5, rel_tol=1e-6)
    assert math.isclose(L.adjective_loss(a, a).item(), 0.0, abs_tol=1e-6)


# ---- the guidance loop ---------------------------------------------------------------------------
def _plan(bundle, name, regions=(), attributes=(), **changes):
    from locedit.methods import METHODS, EditRequest
    from locedit.options import replace_path

    m = METHODS[name]
    options = replace_path(m.Options(), changes) if changes else m.Options()
    request = EditRequest(SRC, TGT, regions=tuple(regions), attributes=tuple(attributes), num_steps=6)
    m.check(bundle, request, options)
    plan = m.build(bundle, request, options)
    plan.controller.layout = BatchLayout.cfg(("source", "target"))
    plan.controller.clock.num_steps = 6
    return plan.controller, plan.subscribers[0]


def _measure(bundle, ctrl, guide, z, step, conds):
    """The captured (heads, P, K) maps of the target for latent z at ``step``, through the engine."""
    sched = bundle.schedule(6)
    t, a = sched.timesteps[step], sched.alphas[step]
    saved = ctrl.layout
    ctrl.layout = BatchLayout.single(("source", "target"))
    ctrl.clock.set(step, t, "guide")
    cap = guide.captures[-1]
    cap.begin()
    with torch.no_grad():
        bundle.predict_eps(z, t, a, conds)
    records = [r.detach() for r in cap.records]
    cap.end()
    ctrl.layout = saved
    return records


def _ratios(records, tokens, mask_map):
    """In-mask token share and spatial share of the edit word, averaged over layers and heads."""
    token = torch.stack([((r[..., tokens].mean(-1) / r.sum(-1)) * mask_map).sum(-1) / mask_map.sum()
                         for r in records]).mean()
    spatial = torch.stack([(r[..., tokens].sum(-1) * mask_map).sum(-1) / r[..., tokens].sum(-1).sum(-1)
                           for r in records]).mean()
    return token.item(), spatial.item()


@pytest.mark.parametrize("loss", ["token-ratio", "spatial-ratio"])
def test_mag_edit_raises_the_in_mask_ratios_and_touches_nothing_outside(bundle, setup, loss):
    from locedit.diffusion.text import token_positions
    from locedit.guidance.loop import map_mask_from
    from locedit.masks import Region

    traj, mask = setup
    ctrl, guide = _plan(bundle, "mag-edit", [Region("blue", mask)], loss=loss,
                        **{"guidance.guided_steps": 1, "guidance.iterations": 8, "guidance.step_size": 50.0})
    conds = bundle.encode_text([SRC, TGT])
    z = traj.noise.expand(2, -1, -1, -1).clone()
    sched = bundle.schedule(6)
    with controlled_attention(bundle.unet, ctrl):
        before = _measure(bundle, ctrl, guide, z, 0, conds)
        z_new = guide(bundle, ctrl, bundle.steps(sched.num_steps)[0], z, conds)
        after = _measure(bundle, ctrl, guide, z_new, 0, conds)
    m = map_mask_from(mask, 8, "nearest")
    tokens = token_positions(bundle.tokenizer, TGT, "blue")
    tr0, sr0 = _ratios(before, tokens, m)
    tr1, sr1 = _ratios(after, tokens, m)
    assert tr1 > tr0 and sr1 > sr0, (tr0, tr1, sr0, sr1)
    assert guide.history[0][-1] < guide.history[0][0]
    outside = guide.latent_mask[0, 0] == 0
    assert outside.any()
    assert torch.equal(z_new[:, :, outside], z[:, :, outside])  # update only inside M
    assert torch.equal(z_new[0], z[0])  # the source branch is never guided
    assert not torch.equal(z_new[1], z[1])


def test_mag_edit_end_to_end_keeps_outside_equal_to_source_in_the_blend_steps(bundle, setup):
    from locedit.masks import Region

    traj, mask = setup
    ctrl, guide = _plan(bundle, "mag-edit", [Region("blue", mask)], blend_last=3, dilate=0,
                        **{"guidance.guided_steps": 2, "guidance.iterations": 2})
    out = pipeline.sample(bundle, traj, [SRC, TGT], controller=ctrl, subscribers=(guide,))
    outside = guide.latent_mask[0, 0] == 0
    assert torch.equal(out.latents[1][:, outside], out.latents[0][:, outside])
    assert len(guide.history) == 2


@pytest.mark.parametrize("oal_form", ["bce", "quartic"])
def test_mde_edit_oal_has_gradient_falls_and_merge_keeps_outside(bundle, setup, oal_form):
    from locedit.masks import Region

    traj, mask = setup
    attr = torch.zeros(1, 1, 64, 64)
    attr[..., 16:40, 20:32] = 1
    ctrl, guide = _plan(bundle, "mde-edit", [Region("square", mask)], [Region("blue", attr)], lambda_ccl=0.0,
                        oal_form=oal_form,
                        **{"guidance.guided_steps": 1, "guidance.iterations": 6, "guidance.step_size": 50.0})
    conds = bundle.encode_text([SRC, TGT])
    sched = bundle.schedule(6)
    z = traj.noise.expand(2, -1, -1, -1).clone()
    with controlled_attention(bundle.unet, ctrl):
        # a non-zero gradient of the OAL-only loss with respect to the target latent
        saved = ctrl.layout
        ctrl.layout = BatchLayout.single(("source", "target"))
        ctrl.clock.set(0, sched.timesteps[0], "guide")
        for c in guide.captures:
            c.begin()
        zt = z[1:2].clone().requires_grad_(True)
        bundle.predict_eps(torch.cat([z[0:1], zt]), sched.timesteps[0], sched.alphas[0], conds)
        (grad,) = torch.autograd.grad(guide.loss(*guide.captures), zt)
        for c in guide.captures:
            c.end()
        ctrl.layout = saved
        assert grad.abs().sum() > 0
        # it falls when optimised, and the merge (Eq. 8) leaves the outside of the masks alone
        z_new = guide(bundle, ctrl, bundle.steps(sched.num_steps)[0], z, conds)
    assert guide.history[0][-1] < guide.history[0][0]
    outside = guide.latent_mask[0, 0] == 0
    assert torch.equal(z_new[:, :, outside], z[:, :, outside])


def test_chain_takes_the_fast_score_path_unless_a_member_rewrites_scores(bundle):
    from locedit.attention import AttentionController, parse_site
    from locedit.attention import Chain
    from locedit.instruct.lime import AttentionRegularizer

    site = parse_site("up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", 2)

    class Wants(AttentionController):
        def wants(self, s):
            return True

    assert not Chain([Wants(), Wants()]).rewrites_scores(site)
    reg = AttentionRegularizer(torch.ones(4, 4, dtype=torch.bool), [1], bundle.max_tokens, (0.0, 1.0))
    reg.clock.num_steps = 1
    assert Chain([Wants(), reg]).rewrites_scores(site)


def test_a_mask_that_vanishes_at_the_attention_maps_is_refused_before_any_unet_call(bundle, setup):
    """MAG-Edit's ratio divides by the mask's pixel count at the maps; the authors' code turns the
    edit into NaN when nearest resizing empties the mask, locedit refuses it up front."""
    from locedit.attention import map_level, unet_sites
    from locedit.errors import MaskError
    from locedit.masks import Region

    traj, big = setup
    s = bundle.unet.config.sample_size // 2 ** map_level(unet_sites(bundle.unet))
    step = 64 // s  # nearest resizing samples pixel k * step
    speck = torch.zeros(1, 1, 64, 64)
    speck[..., 1:step, 1:step] = 1  # between the sample points: empty at the maps
    calls = bundle.unet_calls
    for method, kw in (("mag-edit", {"regions": [Region("blue", speck)]}),
                       ("mde-edit", {"regions": [Region("square", big)], "attributes": [Region("blue", speck)]})):
        with pytest.raises(MaskError, match=f"empty at the {s}x{s} attention maps"):
            pipeline.edit(bundle, None, SRC, TGT, method=method, trajectory=traj, **kw)
    assert bundle.unet_calls == calls


def test_gradient_checkpointing_changes_no_result_and_is_restored(bundle, image):
    """--grad-checkpointing recomputes activations in the backward passes: every method that takes
    gradients (null-text, SPDInv, LocInv, MAG-Edit's guidance) gives the same result with it."""
    from locedit.masks import Region
    from locedit.methods.locinv import LocInvEditOptions
    from locedit.methods.mag_edit import MAGEditOptions
    from locedit.options import replace_path

    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 16:40, 20:44] = 1
    flags = [m for m in bundle.unet.modules() if hasattr(m, "gradient_checkpointing")]
    assert flags and not any(m.gradient_checkpointing for m in flags)
    calls = []

    def count(module, args):  # a resnet's forwards: checkpointing runs it again in each backward
        calls.append(1)

    handle = bundle.unet.down_blocks[0].resnets[0].register_forward_pre_hook(count)
    runs = {}
    try:
        for ckpt in (False, True):
            calls.clear()
            mag = pipeline.edit(bundle, image, SRC, TGT, method="mag-edit", inversion="null-text", num_steps=2,
                                options=replace_path(MAGEditOptions(), {"guidance.iterations": 2}),
                                regions=[Region("blue", mask)],
                                edit_options=pipeline.EditOptions(grad_checkpointing=ckpt))
            loc = pipeline.edit(bundle, image, SRC, TGT, method="locinv", num_steps=2,
                                options=replace_path(LocInvEditOptions(), {"locinv.max_inner": 2, "locinv.lr": 0.05}),
                                regions=[Region("square", mask)],
                                edit_options=pipeline.EditOptions(grad_checkpointing=ckpt))
            spd = pipeline.invert(bundle, image, SRC, "spd", num_steps=2, grad_checkpointing=ckpt)
            runs[ckpt] = (mag.sample.latents, loc.sample.latents, torch.cat(spd.latents), len(calls))
            assert not any(m.gradient_checkpointing for m in flags)  # restored
    finally:
        handle.remove()
    for plain, ckpt in zip(runs[False][:3], runs[True][:3]):
        torch.testing.assert_close(ckpt, plain, rtol=0, atol=1e-5)
    assert runs[True][3] > runs[False][3]  # the blocks did run again in the backward passes
    from locedit.errors import LoceditError

    with pytest.raises(LoceditError, match="no effect here: neither --method p2p nor --inversion ddim"):
        pipeline.edit(bundle, image, SRC, TGT, inversion="ddim", num_steps=2,
                      edit_options=pipeline.EditOptions(grad_checkpointing=True))
    with pytest.raises(LoceditError, match="no effect on --inversion direct"):
        pipeline.invert(bundle, image, SRC, "direct", num_steps=2, grad_checkpointing=True)
    with pytest.raises(RuntimeError):  # restored on error too
        with bundle.checkpointing(True):
            assert all(m.gradient_checkpointing for m in flags)
            raise RuntimeError("boom")
    assert not any(m.gradient_checkpointing for m in flags)


def _guided_plan(bundle, name, mask, iterations):
    """A factory of fresh (controller, guide) for 2 guided steps of ``iterations``: MAG-Edit with
    ``mask`` as the region of "blue", or MDE-Edit with it as the object "square" and a narrower
    attribute box for "blue"."""
    from locedit.masks import Region

    attr = torch.zeros(1, 1, 64, 64)
    attr[..., 16:40, 20:32] = 1
    kw = {"guidance.guided_steps": 2, "guidance.iterations": iterations, "guidance.step_size": 50.0}
    if name == "mag-edit":
        return lambda: _plan(bundle, "mag-edit", [Region("blue", mask)], **kw)
    return lambda: _plan(bundle, "mde-edit", [Region("square", mask)], [Region("blue", attr)], **kw)


@pytest.mark.parametrize("name", ["mag-edit", "mde-edit"])
def test_source_replay_equals_the_full_batch_iterations_with_half_the_rows(bundle, setup, name):
    """After the first iteration of a guided step the target runs alone, the source's attention
    replayed (SourceReplay): the same guided latents and losses as every iteration on [source,
    target], with batch-1 calls."""
    traj, mask = setup
    # MAG-Edit's engine: P2P refine with self-attention injected (probabilities); MDE-Edit: logits captured
    plan = _guided_plan(bundle, name, mask, iterations=4)
    conds = bundle.encode_text([SRC, TGT])
    sched = bundle.schedule(6)
    z = traj.noise.expand(2, -1, -1, -1).clone()
    out, calls = {}, {}
    for replay in (False, True):
        ctrl, guide = plan()
        guide.replay_source = replay
        batches = []
        hook = bundle.unet.register_forward_pre_hook(lambda m, args: batches.append(args[0].shape[0]))
        try:
            with controlled_attention(bundle.unet, ctrl):
                z1 = guide(bundle, ctrl, bundle.steps(sched.num_steps)[0], z, conds)
        finally:
            hook.remove()
        out[replay], calls[replay] = (z1, guide.history[0]), batches
    assert calls[False] == [2, 2, 2, 2] and calls[True] == [2, 1, 1, 1]
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=1e-5)
    assert out[True][1] == pytest.approx(out[False][1], rel=1e-4)
    assert not torch.equal(out[True][0][1], z[1])  # it did guide


@pytest.mark.parametrize("name", ["mag-edit", "mde-edit"])
def test_maps_only_forwards_stop_after_the_last_map_site_with_the_same_result(bundle, setup, name):
    """MapsOnly: after the first guidance forward, each one stops once the captures hold their maps.
    The guided latents and losses are those of whole forwards, over two guided steps (the counts
    carried from the first step to the second), and the output convolution runs only in the first."""
    traj, mask = setup
    plan = _guided_plan(bundle, name, mask, iterations=3)
    conds = bundle.encode_text([SRC, TGT])
    sched = bundle.schedule(6)
    out, tails = {}, {}
    for stop in (False, True):
        ctrl, guide = plan()
        guide.maps_only = stop
        ran = []
        hook = bundle.unet.conv_out.register_forward_hook(lambda m, a, o: ran.append(1))
        z = traj.noise.expand(2, -1, -1, -1).clone()
        try:
            with controlled_attention(bundle.unet, ctrl):
                for i in range(2):
                    z = guide(bundle, ctrl, bundle.steps(sched.num_steps)[i], z, conds)
        finally:
            hook.remove()
        out[stop], tails[stop] = (z, guide.history), len(ran)
    assert tails[False] == 6 and tails[True] == 1
    torch.testing.assert_close(out[True][0], out[False][0], rtol=0, atol=1e-6)
    for a, b in zip(out[True][1], out[False][1]):
        assert a == pytest.approx(b, rel=1e-6)
    assert not torch.equal(out[True][0][1], traj.noise[0])  # it did guide


def test_locinv_token_learning_stops_at_the_maps_with_the_same_tokens(bundle, image):
    from locedit.guidance.locinv import LocInvOptions, locinv_inversion
    from locedit.inversion import NullTextOptions
    from locedit.masks import Region

    prior = torch.zeros(1, 1, 64, 64)
    prior[..., 16:40, 20:44] = 1
    z0 = bundle.encode_image(image)
    opts = LocInvOptions(max_inner=3, nti=NullTextOptions(inner_steps=1))
    runs = {}
    for stop in (False, True):
        ran = []
        hook = bundle.unet.conv_out.register_forward_hook(lambda m, a, o: ran.append(1))
        try:
            runs[stop] = (locinv_inversion(bundle, z0, SRC, [Region("square", prior)], 2, options=opts,
                                           stop_at_maps=stop), len(ran))
        finally:
            hook.remove()
    (full, n_full), (short, n_short) = runs[False], runs[True]
    assert sum(full.stats["iterations"]) > 1  # several token-learning forwards, all but the first stopped
    assert n_full - n_short == sum(i + (i < 3) for i in full.stats["iterations"]) - 1
    for w in full.token_vectors:
        torch.testing.assert_close(short.token_vectors[w], full.token_vectors[w], rtol=0, atol=1e-6)
    for a, b in zip(short.null_embeddings, full.null_embeddings):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
