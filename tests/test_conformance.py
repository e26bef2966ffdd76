"""Conformance with the papers and the authors' code (docs/conformance.md), item by item.

Each test computes the expected value here, from the paper's equation or the rule the authors'
code follows, on small hand-made tensors, and checks locedit's function against it.
"""

import math

import pytest
import torch

from locedit import pipeline
from locedit.attention import BatchLayout, StepClock, parse_site
from locedit.control import P2POptions, Prompt2Prompt, refine_mapping
from locedit.diffusion.text import token_positions
from locedit.masks import Region
from locedit.methods import METHODS, EditRequest
from locedit.options import preset, replace_path

CROSS = parse_site("down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", 2)  # level 1: the map level


# ---- 1. P2P refine alignment -----------------------------------------------------------------------------
def reference_alignment(src, tgt):
    """Global alignment, match 1, mismatch -1, gap 0, traceback preferring left, then up, then
    diagonal (google/prompt-to-prompt seq_aligner): {target index: source index} of aligned tokens."""
    n, m = len(src), len(tgt)
    f = {(i, 0): 0 for i in range(n + 1)}
    f.update({(0, j): 0 for j in range(m + 1)})
    for i in range(1, n + 1):
        for j in range(1, m + 1):
            f[i, j] = max(f[i, j - 1], f[i - 1, j], f[i - 1, j - 1] + (1 if src[i - 1] == tgt[j - 1] else -1))
    pairs, i, j = {}, n, m
    while i > 0 and j > 0:
        if f[i, j] == f[i, j - 1]:
            j -= 1
        elif f[i, j] == f[i - 1, j]:
            i -= 1
        else:
            i, j = i - 1, j - 1
            pairs[j] = i
    return pairs


def aligned_target_words(bundle, src, tgt):
    tok = bundle.tokenizer
    matrix, alphas = refine_mapping(tok(src).input_ids, tok(tgt).input_ids, bundle.max_tokens)
    words = ["<s>"] + tgt.split() + ["</s>"]
    return {words[j]: int(matrix[:, j].argmax()) for j in range(len(words)) if alphas[j] == 1}, matrix, alphas


def test_refine_treats_a_repeated_word_as_new(bundle):
    tok = bundle.tokenizer
    _, _, alphas = aligned_target_words(bundle, "a red circle", "a red red circle")
    # <s> a red red circle </s>: the first 'red' is aligned, the second is new
    assert alphas[:6].tolist() == [1, 1, 1, 0, 1, 1]
    assert reference_alignment(tok("a red circle").input_ids, tok("a red red circle").input_ids) == {
        0: 0, 1: 1, 2: 2, 4: 3, 5: 4}


def test_refine_on_swapped_objects_injects_the_first_object_phrase(bundle):
    src, tgt = "a red circle and a blue square", "a blue square and a red circle"
    aligned, matrix, alphas = aligned_target_words(bundle, src, tgt)
    # the authors' alignment injects 'blue square' (source positions 6, 7), not 'and a'
    assert aligned["blue"] == 6 and aligned["square"] == 7
    assert alphas[4] == 0  # target 'and' is new
    tok = bundle.tokenizer
    ref = reference_alignment(tok(src).input_ids, tok(tgt).input_ids)
    k = len(tok(tgt).input_ids)
    assert {j: int(matrix[:, j].argmax()) for j in range(k) if alphas[j] == 1} == ref


def test_refine_matches_the_reference_on_random_prompt_pairs(bundle):
    import random

    rng = random.Random(0)
    words = "a red blue green cat dog square circle on the and big small".split()
    tok = bundle.tokenizer
    for _ in range(200):
        src = " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
        tgt = " ".join(rng.choice(words) for _ in range(rng.randint(2, 8)))
        s_ids, t_ids = tok(src).input_ids, tok(tgt).input_ids
        matrix, alphas = refine_mapping(s_ids, t_ids, bundle.max_tokens)
        got = {j: int(matrix[:, j].argmax()) for j in range(len(t_ids)) if alphas[j] == 1}
        assert got == reference_alignment(s_ids, t_ids), (src, tgt)


def test_refine_maps_target_padding_position_t_to_source_t(bundle):
    tok = bundle.tokenizer
    matrix, alphas = refine_mapping(tok("a red cat on the grass").input_ids, tok("a cat").input_ids, bundle.max_tokens)
    for t in range(4, bundle.max_tokens):  # target: <s> a cat </s> then padding
        assert matrix[t, t] == 1 and alphas[t] == 1


# ---- 2. word swap across a multi-token word ----------------------------------------------------------------
def test_word_swap_gives_each_token_of_a_three_token_word_a_third_of_the_source_word(bundle):
    tok = bundle.tokenizer
    src, tgt = "a cat on the grass", "a dogcat on the grass"
    assert len(token_positions(tok, tgt, "dogcat")) == 3
    ctrl = Prompt2Prompt(P2POptions(mode="replace"), tok, src, tgt, num_steps=10, map_level=1,
                         clock=StepClock(num_steps=10))
    probs = torch.rand(4, 2, 16, bundle.max_tokens).softmax(-1)
    ctrl.clock.set(0, 900)
    out = ctrl.edit_probs(probs, CROSS)
    src_row, tgt_row = probs[2], out[3]
    for j in (2, 3, 4):  # the three tokens of 'dogcat' each take a third of 'cat' (source position 2)
        torch.testing.assert_close(tgt_row[..., j], src_row[..., 2] / 3)
    torch.testing.assert_close(tgt_row[..., 5], src_row[..., 3])  # 'on' keeps its word
    torch.testing.assert_close(tgt_row[..., 8], src_row[..., 6])  # the end token
    torch.testing.assert_close(tgt_row[..., 12], src_row[..., 12])  # padding t <- t


def test_word_swap_refuses_only_different_word_counts(bundle):
    from locedit.errors import PromptError
    from locedit.control import replace_matrix

    replace_matrix(bundle.tokenizer, "a cat on the grass", "a dogcat on the grass", bundle.max_tokens)  # ok
    with pytest.raises(PromptError, match="number of words"):
        replace_matrix(bundle.tokenizer, "a cat", "a big cat", bundle.max_tokens)


# ---- 3. LocalBlend takes the target's maps after injection --------------------------------------------------
def test_local_blend_accumulates_the_injected_target_maps(bundle):
    tok = bundle.tokenizer
    src, tgt = "a red cat", "a blue cat"
    ctrl = Prompt2Prompt(P2POptions(mode="replace"), tok, src, tgt, num_steps=10, map_level=1,
                         clock=StepClock(num_steps=10), blend_words=("red", "blue"))
    probs = torch.rand(4, 2, 16, bundle.max_tokens).softmax(-1)
    ctrl.clock.set(0, 900)  # inside the cross-attention window
    ctrl.edit_probs(probs, CROSS)
    # word swap: target 'blue' (position 2) takes source 'red' (position 2); the store holds that
    expected = probs[2, :, :, 2].mean(0).reshape(4, 4)
    torch.testing.assert_close(ctrl.store.maps("target")[0], expected)
    assert not torch.allclose(ctrl.store.maps("target")[0], probs[3, :, :, 2].mean(0).reshape(4, 4))


def reference_alpha_rows(num_steps, fraction):
    """prompt-to-prompt's get_time_words_attention_alpha: a table of num_steps + 1 rows, rows
    [0, int(fraction * rows)) set; step i reads row i."""
    rows = num_steps + 1
    return [i for i in range(num_steps) if i < int(fraction * rows)]


@pytest.mark.parametrize("steps,fraction", [(3, 0.8), (10, 0.4), (50, 0.8), (7, 0.5)])
def test_cross_window_official_follows_the_n_plus_1_row_table_paper_the_fraction_of_n(bundle, steps, fraction):
    tok = bundle.tokenizer
    for window, expected in (("n+1", reference_alpha_rows(steps, fraction)),
                             ("n", [i for i in range(steps) if i < int(fraction * steps)])):
        ctrl = Prompt2Prompt(P2POptions(mode="refine", cross_replace=fraction, cross_window=window), tok,
                             "a red cat", "a blue cat", num_steps=steps, map_level=1, clock=StepClock(num_steps=steps))
        active = []
        for i in range(steps):
            ctrl.clock.set(i, 999 - i)
            active += [i] if ctrl.wants(CROSS) else []
        assert active == expected, (window, steps, fraction)
    assert preset(P2POptions, "official").cross_window == "n+1" and preset(P2POptions, "paper").cross_window == "n"


# ---- 4. SPDInv: step, then test; the last iterate ---------------------------------------------------------
def test_spd_takes_one_paper_gradient_step_then_stops_on_the_tested_residual(bundle, image):
    from locedit.diffusion import ddim_step
    from locedit.inversion import SPDOptions

    prompt = "a red square on the gray background"
    opts = SPDOptions(max_steps=25, threshold=1e9, lr=1e-3)  # paper: SGD on the L2 norm
    traj = pipeline.invert(bundle, image, prompt, "spd", num_steps=2, options=opts)
    # expected, by Alg. 1: z_t from Eq. 2, L = ||f(z_t) - z_t||_2, z_t := z_t - eta grad L, then L < delta: stop
    sched = bundle.schedule(2)
    cond = bundle.encode_text([prompt])
    i = 1
    t, a_from, a_to = sched.timesteps[i], sched.alphas_next[i], sched.alphas[i]
    z0 = traj.latents[0]
    with torch.no_grad():
        x = ddim_step(z0, bundle.predict_eps(z0, t, a_from, cond), a_from, a_to)
    x = x.clone().requires_grad_(True)
    loss = (ddim_step(z0, bundle.predict_eps(x, t, a_to, cond), a_from, a_to) - x).flatten().norm()
    (grad,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(traj.latents[1], (x - 1e-3 * grad).detach(), rtol=1e-5, atol=1e-6)
    assert traj.stats["iterations"][0] == 1


# ---- 5. SPDInv inversion guidance: the mask per latent channel -------------------------------------------
def test_inversion_guidance_mask_is_per_channel():
    delta = torch.zeros(1, 4, 6, 6)
    delta[0, 1, 2, 2] = 5.0  # one channel of one latent is edited
    z = torch.randn(1, 4, 6, 6)
    target = torch.randn(1, 4, 6, 6)
    out = pipeline.inversion_guidance(z, target, delta, torch.tensor(1.0))
    expected = target.clone()  # everything pulled onto the inversion ...
    expected[0, 1, 1:4, 1:4] = z[0, 1, 1:4, 1:4]  # ... except the edited channel's 3x3 neighbourhood
    torch.testing.assert_close(out, expected)


# ---- 6. MAG-Edit token ratio ------------------------------------------------------------------------------
def reference_token_ratio(records, tokens, mask):
    """Eq. 1 per head and layer over all K token positions (compute_ca_TR), by explicit loops."""
    losses = []
    for a in records:
        heads, pixels, _ = a.shape
        for h in range(heads):
            acc = 0.0
            for p in range(pixels):
                word = sum(a[h, p, k].item() for k in tokens) / len(tokens)
                acc += mask[p].item() * word / sum(a[h, p, :].tolist())
            losses.append((1 - acc / mask.sum().item()) ** 2)
    return sum(losses) / len(losses)


def _capture_with(records):
    from locedit.guidance import MapCapture

    cap = MapCapture(map_level=1)
    cap.records = records
    return cap


def test_mag_edit_loss_is_eq1_per_head_over_all_tokens_averaged_over_words(bundle):
    src, tgt = "a red cat and a red dog", "a blue cat and a green dog"
    m1 = torch.zeros(1, 1, 64, 64)
    m1[..., :32, :32] = 1
    m2 = torch.zeros(1, 1, 64, 64)
    m2[..., 32:, 20:60] = 1
    request = EditRequest(src, tgt, regions=(Region("blue", m1), Region("green", m2)), num_steps=4)
    plan = METHODS["mag-edit"].build(bundle, request, METHODS["mag-edit"].Options())
    g = torch.Generator().manual_seed(0)
    records = [torch.rand(2, 64, bundle.max_tokens, generator=g) for _ in range(3)]  # 3 layers, 2 heads, 8x8 maps
    got = plan.subscribers[0].loss(_capture_with(records)).item()
    # masks nearest-resized to the 8x8 map and binary
    near = [torch.nn.functional.interpolate(m, size=(8, 8), mode="nearest").flatten() for m in (m1, m2)]
    expected = (reference_token_ratio(records, [2], near[0]) + reference_token_ratio(records, [6], near[1])) / 2
    assert math.isclose(got, expected, rel_tol=1e-5)


# ---- 7. MDE-Edit: CCL on the injected maps, OAL on the target's own -----------------------------------------
def _mde(bundle, preset_name):
    src, tgt = "a red cat on the grass", "a blue dog on the grass"
    obj = torch.zeros(1, 1, 64, 64)
    obj[..., 8:40, 8:40] = 1
    attr = torch.zeros(1, 1, 64, 64)
    attr[..., 16:48, 16:48] = 1
    request = EditRequest(src, tgt, regions=(Region("dog", obj),), attributes=(Region("blue", attr),), num_steps=10)
    options = preset(METHODS["mde-edit"].Options, preset_name)
    plan = METHODS["mde-edit"].build(bundle, request, options)
    plan.controller.layout = BatchLayout.single(("source", "target"))
    plan.controller.clock.num_steps = 10
    return plan, obj, attr, options


def _run_site(plan, probs, scores=None):
    ctrl = plan.controller
    ctrl.clock.set(0, 900, "guide")
    for c in plan.subscribers[0].captures:
        c.begin()
    if scores is not None:
        ctrl.edit_scores(scores, CROSS)
    return ctrl.edit_probs(probs, CROSS)


def test_mde_ccl_uses_injected_maps_and_oal_the_targets_own(bundle):
    from locedit.guidance import losses as L

    plan, obj, attr, options = _mde(bundle, "paper")
    g = torch.Generator().manual_seed(1)
    probs = torch.rand(2, 2, 64, bundle.max_tokens, generator=g).softmax(-1)  # [source, target] rows
    out = _run_site(plan, probs)
    own, injected = plan.subscribers[0].captures
    assert torch.equal(own.records[0], probs[1])  # before the engine
    assert torch.equal(injected.records[0], out[1]) and not torch.equal(out[1], probs[1])  # after it
    # expected loss: Eq. 4-5 on the own map of 'dog' (position 3) + 1.25 * Eq. 6 on the injected 'blue' (2)
    dog = probs[1, :, :, 3].mean(0)
    s = torch.nn.functional.adaptive_avg_pool2d(obj, 8).flatten()
    peak = dog / dog.max()
    bce = lambda p, y: -(y * torch.log(p) + (1 - y) * torch.log(1 - p)).mean()  # noqa: E731
    oal = bce(dog, s) + bce(peak.clamp(max=1 - L.PROB_EPS), s)
    near = torch.nn.functional.interpolate(attr, size=(8, 8), mode="nearest").flatten()
    ccl = reference_token_ratio([out[1]], [2], near)
    got = plan.subscribers[0].loss(own, injected).item()
    assert math.isclose(got, oal.item() + 1.25 * ccl, rel_tol=1e-4)


def test_mde_official_preset_is_the_codes_quartic_oal_and_3_minus_4r_ccl_at_weight_1_5(bundle):
    plan, obj, attr, options = _mde(bundle, "official")
    assert (options.lambda_ccl, options.oal_form, options.ccl_form) == (1.5, "quartic", "spatial-ratio")
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 2, 64, bundle.max_tokens, generator=g)
    probs = scores.softmax(-1)
    out = _run_site(plan, probs, scores)
    own, injected = plan.subscribers[0].captures
    # OAL: logits bilinearly resized 8 -> 16, softmax over tokens, mean over heads, vs the area-resized mask
    grid = scores[1].permute(0, 2, 1).reshape(2, -1, 8, 8)
    up = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bilinear", align_corners=False)
    dog = up.flatten(2).softmax(1).mean(0)[3]
    s = torch.nn.functional.adaptive_avg_pool2d(obj, 16).flatten()
    close = (dog - s).abs() < 0.1
    smoothed = torch.where(close, s.clamp(0.1, 0.9), dog)
    oal = ((smoothed - s) ** 4).mean()
    # CCL: 3 - 4r per head on the injected map of 'blue', r = in-mask share of its map
    near = torch.nn.functional.interpolate(attr, size=(8, 8), mode="nearest").flatten()
    blue = out[1, :, :, 2]
    r = (blue * near).sum(-1) / blue.sum(-1)
    ccl = (3 - 4 * r).mean()
    assert math.isclose(plan.subscribers[0].loss(own, injected).item(), (oal + 1.5 * ccl).item(), rel_tol=1e-4)


# ---- 8. LocInv ------------------------------------------------------------------------------------------
def test_locinv_binds_adjectives_only_when_asked(bundle, image):
    from locedit.guidance.locinv import LocInvOptions, locinv_inversion
    from locedit.inversion import NullTextOptions

    prior = torch.zeros(1, 1, 64, 64)
    prior[..., 16:40, 20:44] = 1
    opts = LocInvOptions(max_inner=0, nti=NullTextOptions(inner_steps=0))
    z0 = bundle.encode_image(image)
    prompt = "a red square on the gray background"
    off = locinv_inversion(bundle, z0, prompt, [Region("square", prior)], 2, options=opts)
    assert off.stats["pairs"] == [] and off.stats["pairs_from"] == "off"
    on = locinv_inversion(bundle, z0, prompt, [Region("square", prior)], 2,
                          options=replace_path(opts, {"adj_bind": True, "pair_source": "previous"}))
    assert on.stats["pairs"] == [["red", "square"]]


def test_locinv_restart_nti_runs_31_iterations_from_the_empty_prompt(bundle, image):
    from locedit.guidance.locinv import LocInvOptions, locinv_inversion

    prior = torch.zeros(1, 1, 64, 64)
    prior[..., 16:40, 20:44] = 1
    z0 = bundle.encode_image(image)
    prompt = "a red square on the gray background"
    steps = 2
    calls = bundle.unet_calls
    traj = locinv_inversion(bundle, z0, prompt, [Region("square", prior)], steps,
                            options=LocInvOptions(max_inner=0, nti_mode="restart"))
    # per step: DDIM inversion 1, token learning 1 (max_inner 0), conditional eps 1, null-text 31, eps_u 1
    assert bundle.unet_calls - calls == steps * (1 + 1 + 1 + 31 + 1)
    calls = bundle.unet_calls  # the scripts' --null_inner_steps is an argument: --locinv-restart-iterations
    locinv_inversion(bundle, z0, prompt, [Region("square", prior)], steps,
                     options=LocInvOptions(max_inner=0, nti_mode="restart", restart_iterations=5))
    assert bundle.unet_calls - calls == steps * (1 + 1 + 1 + 5 + 1)
    from locedit.errors import LoceditError

    with pytest.raises(LoceditError, match="acts only with nti_mode restart"):  # not accepted and then ignored
        LocInvOptions(restart_iterations=5)
    # every step's null embedding starts again from the empty prompt's: with lr 0 it stays exactly that
    flat = locinv_inversion(bundle, z0, prompt, [Region("square", prior)], steps,
                            options=replace_path(LocInvOptions(max_inner=0, nti_mode="restart"), {"nti.lr": 1e-12}))
    empty = bundle.encode_text([""])
    for null in flat.null_embeddings:
        torch.testing.assert_close(null, empty, rtol=0, atol=1e-6)
    assert len(traj.null_embeddings) == steps


def test_locinv_token_learning_evaluates_before_each_update_and_not_after_the_last(bundle, image):
    """The code's loop: at most 31 evaluations, each followed by an update unless every loss is
    below its threshold; the vector after the 31st update is not evaluated."""
    from locedit.guidance.locinv import LocInvOptions, locinv_inversion

    prior = torch.zeros(1, 1, 64, 64)
    prior[..., 16:40, 20:44] = 1
    z0 = bundle.encode_image(image)
    never = (50.0, 1e-12, 1.0)  # thresholds no loss meets
    opts = LocInvOptions(max_inner=4, sim=never, ov=never, nti_mode="restart", restart_iterations=0)
    calls = bundle.unet_calls
    traj = locinv_inversion(bundle, z0, "a red square on the gray background", [Region("square", prior)], 2,
                            options=opts)
    # per step: DDIM inversion 1, token learning 4 (4 evaluations, 4 updates), conditional eps 1, eps_u 1
    assert bundle.unet_calls - calls == 2 * (1 + 4 + 1 + 1)
    assert traj.stats["iterations"] == [4, 4]


def test_locinv_box_defaults_scripts_or_det_script():
    from locedit.guidance.locinv import LOCINV_DEFAULTS, LocInvOptions

    assert LocInvOptions().params("box")["sim"] == (25.0, 0.5, 0.1)
    assert LocInvOptions(box_defaults="det-script").params("box") == {
        **LOCINV_DEFAULTS["seg"], "adj": LOCINV_DEFAULTS["adj"]}


def _pil_reads(mask_u8, side):
    """What DPL's read_segfile computes: Pillow's default resize, then every non-zero cell."""
    import numpy as np
    from PIL import Image

    return np.asarray(Image.fromarray(mask_u8).resize((side, side))).astype(bool)


@pytest.mark.parametrize("size,side", [(64, 2), (128, 4), (512, 16), (96, 16)])
def test_locinv_priors_are_read_as_pillow_resizes_them(size, side):
    import numpy as np

    from locedit.guidance.loop import map_mask_from, pil_nonzero_resize

    yy, xx = np.mgrid[:size, :size] + 0.5
    rng = np.random.default_rng(size)
    masks = [((xx - 3 * size / 16) ** 2 + (yy - 3 * size / 16) ** 2 <= (size / 16) ** 2),  # a small disc
             ((xx - 0.3 * size) ** 2 + (yy - 0.5 * size) ** 2 <= (0.17 * size) ** 2),  # the scene's circle
             (np.abs(xx - 0.7 * size) + np.abs(yy - 0.4 * size) <= 0.2 * size)]  # a diamond
    masks = [(m * 255).astype(np.uint8) for m in masks]
    masks.append((rng.random((size, size)) < 0.02).astype(np.uint8) * 255)  # scattered pixels
    for m in masks:
        expected = _pil_reads(m, side)
        got = pil_nonzero_resize(torch.from_numpy(m / 255.0)[None, None], side)[0, 0].numpy() > 0.5
        assert (got == expected).all(), (size, side)
        flat = map_mask_from(torch.from_numpy(m / 255.0)[None, None], side, "pil-nonzero")
        assert torch.equal(flat, torch.from_numpy(expected.astype(np.float32)).flatten())
    # the code's reading is not the soft cell means: the disc reaches cells it hardly covers
    area = map_mask_from(torch.from_numpy(masks[1] / 255.0)[None, None], side, "area")
    pil = map_mask_from(torch.from_numpy(masks[1] / 255.0)[None, None], side, "pil-nonzero")
    assert ((pil == 1) & (area < 0.5)).any()


def test_locinv_official_encodes_a_posterior_sample_drawn_with_seed_0(bundle, image):
    from locedit.methods import LocInv
    from locedit.methods.locinv import LocInvEditOptions

    x = image * 2 - 1
    with torch.no_grad():
        dist = bundle.vae.encode(x).latent_dist
        expected = dist.sample(torch.manual_seed(0)) * bundle.vae.config.scaling_factor  # _2_DDIM_inv.py
        mean = dist.mean * bundle.vae.config.scaling_factor
    torch.testing.assert_close(bundle.encode_image(image, sample_seed=0), expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(bundle.encode_image(image), mean, rtol=0, atol=1e-6)
    assert (expected - mean).abs().max() > 1e-3
    prior = torch.zeros(1, 1, 64, 64)
    prior[..., 16:40, 20:44] = 1
    request = EditRequest("a red square on the gray background", "a blue square on the gray background",
                          regions=(Region("square", prior),), num_steps=1)
    for name, z0 in (("official", expected), ("paper", mean)):
        fast = {"locinv.max_inner": 0, "locinv.nti.inner_steps": 0}
        if name == "official":  # null-text restarts there
            fast["locinv.restart_iterations"] = 0
        opts = replace_path(preset(LocInvEditOptions, name), fast)
        traj = LocInv.invert(bundle, image, request, opts)
        torch.testing.assert_close(traj.latents[0], z0, rtol=0, atol=1e-6)


def test_locinv_injects_self_attention_at_16x16_and_coarser(bundle):
    from locedit.attention import Site
    from locedit.methods.locinv import LocInvEditOptions
    from locedit.methods.p2p import P2PEditOptions

    def injected(options, level):
        ctrl = Prompt2Prompt(options, bundle.tokenizer, "a cat", "a dog", num_steps=10, map_level=2)
        ctrl.clock.set(0, 999)
        return ctrl.wants(Site("x", "self", "up", 1, level))

    # DPL's editor: `if H <= 256` (16x16 and 8x8 maps at 512 px: levels 2 and 3); P2P's: 32x32 and coarser
    assert [injected(LocInvEditOptions().p2p, lv) for lv in range(4)] == [False, False, True, True]
    assert [injected(P2PEditOptions().p2p, lv) for lv in range(4)] == [False, True, True, True]


# ---- presets -------------------------------------------------------------------------------------------
def test_presets_are_data_and_differ_only_where_paper_and_code_differ():
    from locedit.inversion import INVERSIONS
    from locedit.options import differences

    diffs = {name: differences(preset(m.Options, "paper"), preset(m.Options, "official")) for name, m in METHODS.items()}
    window = {"p2p.cross_window": ("n", "n+1")}  # the P2P code's (N + 1)-row alpha table
    assert diffs["p2p"] == window and diffs["mag-edit"] == window
    assert set(diffs["mde-edit"]) == {"lambda_ccl", "oal_form", "ccl_form", "p2p.cross_window"}
    # DPL counts its windows in steps; its null-text restarts; _2_DDIM_inv.py samples the posterior
    assert set(diffs["locinv"]) == {"locinv.nti_mode", "locinv.encode", "locinv.pair_source"}  # + the code's pair rule
    assert diffs["blended"] == {"init": ("source", "noise")}  # Alg. 1's noised source; the script's pure noise
    assert diffs["sdedit"] == {} and diffs["masactrl"] == {}
    spd = differences(preset(INVERSIONS["spd"].Options, "paper"), preset(INVERSIONS["spd"].Options, "official"))
    assert spd == {"optimizer": ("sgd", "adamw"), "objective": ("l2", "mse")}
    for name, m in METHODS.items():  # the defaults are the paper's reading
        assert differences(m.Options(), preset(m.Options, "paper")) == {}, name


# ---- 9. LIME -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ["ddim", "euler-ancestral"])
def test_ip2p_loop_equals_diffusers_instructpix2pix_pipeline(instruct_bundle, sampler):
    """The official sampler is the checkpoint's Euler ancestral run by diffusers' InstructPix2Pix
    pipeline: same noise, same guidance formula, same latents."""
    from diffusers import DDIMScheduler, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    from locedit.instruct import IP2POptions, instruct_edit

    b = instruct_bundle
    img = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    ours = instruct_edit(b, img, "make it blue", 5, IP2POptions(1.5, 7.5), torch.Generator().manual_seed(7),
                         sampler=sampler)
    cls = EulerAncestralDiscreteScheduler if sampler == "euler-ancestral" else DDIMScheduler
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=b.vae, text_encoder=b.text_encoder, tokenizer=b.tokenizer, unet=b.unet,
        scheduler=cls.from_config(dict(b.scheduler_config)), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipe("make it blue", image=img, num_inference_steps=5, guidance_scale=7.5, image_guidance_scale=1.5,
                  generator=torch.Generator().manual_seed(7), output_type="latent").images
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_lime_regularisation_rows_levels_and_end_token():
    from locedit.attention import parse_site
    from locedit.instruct import IP2P_LAYOUT
    from locedit.instruct.lime import AttentionRegularizer

    roi = torch.zeros(4, 4, dtype=torch.bool)
    roi[:2, :2] = True
    related = [2, 3, 5]  # e.g. 'square', 'blue' and the end token (position 5)
    reg = AttentionRegularizer(roi, related, 8, (0.0, 1.0), rows="all", levels={0})
    reg.layout = IP2P_LAYOUT
    reg.clock.num_steps = 10
    fine = parse_site("down_blocks.0.attentions.0.transformer_blocks.0.attn2.processor", 2)  # level 0
    coarse = parse_site("down_blocks.1.attentions.0.transformer_blocks.0.attn2.processor", 2)  # level 1
    assert reg.wants(fine) and not reg.wants(coarse)
    scores = torch.randn(3, 2, 16, 8)
    out = reg.edit_scores(scores, fine)
    pix = torch.nn.functional.interpolate(roi.float()[None, None], size=(4, 4), mode="area")[0, 0].flatten() > 0.5
    for row in range(3):  # all three guidance rows (the code's [:8], [8:16], [-8:])
        for q in range(16):
            for k in range(8):
                blocked = bool(pix[q]) and k not in related
                assert (out[row, :, q, k] == float("-inf")).all() == blocked
    text_only = AttentionRegularizer(roi, related, 8, (0.0, 1.0), rows="text")
    text_only.layout = IP2P_LAYOUT
    out = text_only.edit_scores(scores, fine)
    assert torch.equal(out[1:], scores[1:]) and torch.isinf(out[0]).any()


def test_lime_tokens_keep_the_end_token_and_drop_verbs_only_with_nltk(instruct_bundle):
    from locedit.errors import LoceditError
    from locedit.instruct.lime import content_tokens

    tok = instruct_bundle.tokenizer
    instr = "make the square blue"
    n = len(tok(instr).input_ids)
    assert content_tokens(tok, instr, keep_end=True) == content_tokens(tok, instr) + [n - 1]
    try:
        import nltk

        nltk.pos_tag(["make"])
        have_tagger = True
    except (ImportError, LookupError):
        have_tagger = False
    if have_tagger:
        assert token_positions(tok, instr, "make")[0] not in content_tokens(tok, instr, drop_verbs=True)
    else:
        with pytest.raises(LoceditError, match="nltk"):
            content_tokens(tok, instr, drop_verbs=True)


def test_lime_official_features_come_from_self_and_cross_outputs_below_the_latent_level(instruct_bundle):
    """The notebook's first call keeps maps with P >= np.prod(attn_res) = 16 pixels and P < 64 ** 2
    at 512 px: every level but the latent's, the mid block's included."""
    from locedit.attention import StepClock, unet_sites
    from locedit.instruct.lime import feature_hooks, site_filter

    unet = instruct_bundle.unet
    clock = StepClock(num_steps=1)
    x = torch.randn(3, 8, 16, 16)
    emb = instruct_bundle.encode_text(["a", "b", "c"])
    official = preset(METHODS_INSTRUCT()["lime"].Options, "official")
    keep = site_filter(unet, official.sites)
    with feature_hooks(unet, clock, (0.0, 1.0), 1, ("self", "cross"), keep) as store, torch.no_grad():
        unet(x, 500, encoder_hidden_states=emb)
    latent_side = x.shape[-1]
    # every site whose maps are coarser than the latent (the tiny model's 16x16), mid block included
    expected = {s.name for s in unet_sites(unet) if latent_side // 2 ** s.level < latent_side}
    assert set(store) == expected and any(".attn2." in k for k in store) and any(".attn1." in k for k in store)
    assert any(k.startswith("mid_block") for k in store)
    defaults = preset(METHODS_INSTRUCT()["lime"].Options, "paper")
    assert (defaults.features, defaults.sites, defaults.sampler) == ("self+cross", "all", "euler-ancestral")


def METHODS_INSTRUCT():
    from locedit.instruct import INSTRUCT_METHODS

    return INSTRUCT_METHODS


def test_conformance_doc_names_every_option_where_the_presets_differ():
    from pathlib import Path

    from locedit.instruct import INSTRUCT_METHODS
    from locedit.inversion import INVERSIONS
    from locedit.options import differences, flag_fields

    doc = (Path(__file__).resolve().parents[1] / "docs" / "conformance.md").read_text()
    classes = [m.Options for m in METHODS.values()] + [m.Options for m in INSTRUCT_METHODS.values()]
    classes += [inv.Options for inv in INVERSIONS.values()]
    for cls in classes:
        flags = {".".join(f.path): f.flag for f in flag_fields(cls)}
        for key in differences(preset(cls, "paper"), preset(cls, "official")):
            needle = f"--{flags[key]}" if key in flags else f"`{key.split('.')[-1]}`"
            assert needle in doc, (cls.__name__, key, needle)


def test_mde_update_and_blend_masks_are_the_codes(bundle):
    """The update mask: attribute masks as they are, object masks 3x3-dilated; the final blend: the
    union of both, dilated once (update_latents2 and text2image_ldm_stable_MDE)."""
    from locedit.masks import dilate

    plan, obj, attr, _ = _mde(bundle, "paper")
    near = lambda m: (torch.nn.functional.interpolate(m, size=(16, 16), mode="nearest") > 0).float()  # noqa: E731
    o, a = near(obj), near(attr)
    torch.testing.assert_close(plan.subscribers[0].latent_mask, torch.maximum(dilate(o, 1), a))
    engine = [c for c in plan.controller.controllers if hasattr(c, "user_mask")][0]
    torch.testing.assert_close(engine.user_mask, dilate(torch.maximum(o, a), 1))


def test_lime_tokens_follow_the_codes_token_by_token_rule(instruct_bundle):
    """Issue 32: the code tests each token decoded alone (``get_effective_tokens``: the start token and
    stop words out; ``locate_points``: punctuation out too), so a trailing '.' is related in the edit
    and not part of the localisation. The expected lists are the code's loops over the tokens."""
    import string

    from locedit.instruct.lime import content_tokens, stop_words

    tok = instruct_bundle.tokenizer
    for instr in ("make the square blue.", "turn it's square, blue!", "the square"):
        ids = tok(instr).input_ids
        words = [tok.decode([i]).strip() for i in ids]
        effective = [i for i, w in enumerate(words) if i != 0 and w not in stop_words()]
        located = [i for i in effective if words[i] not in string.punctuation]
        assert content_tokens(tok, instr, keep_end=True) == effective, instr
        assert content_tokens(tok, instr, keep_end=True, drop_punctuation=True) == located, instr


def test_lime_regularises_the_roi_resized_to_the_nearest_pixel_as_the_code():
    """The code resizes the RoI to each layer's side with OpenCV's INTER_NEAREST: pixel i of the
    smaller map is source pixel floor(i * S / side)."""
    import numpy as np

    from locedit.instruct.lime import AttentionRegularizer

    rng = np.random.default_rng(0)
    roi = rng.random((32, 32)) > 0.7
    reg = AttentionRegularizer(torch.from_numpy(roi), [1], 8, (0.0, 1.0))
    for side in (16, 8, 4):
        pick = np.floor(np.arange(side) * 32 / side).astype(int)
        expected = roi[np.ix_(pick, pick)].reshape(-1)
        assert np.array_equal(reg.roi_at(side, "cpu").numpy(), expected), side


def test_masks_read_by_half_range_or_every_nonzero_pixel_as_mag_edits_code(tmp_path):
    """Issue 32: locedit takes a mask pixel above half the file's range; MAG-Edit's and MDE-Edit's
    scripts take every non-zero pixel (``mask > 0``): ``--mask-rule nonzero``. A spec with the rule
    prints a command line that parses back to it."""
    import numpy as np
    from PIL import Image

    from locedit import api
    from locedit.cli import build_parser
    from locedit.cli.edit import parse_edit
    from locedit.spec import EditSpec

    rng = np.random.default_rng(0)
    values = rng.choice(np.array([0, 1, 60, 127, 128, 200, 255], np.uint8), size=(32, 32))
    Image.fromarray(values).save(tmp_path / "m.png")
    Image.fromarray(np.full((32, 32, 3), 128, np.uint8)).save(tmp_path / "img.png")
    for rule, expected in (("half", values > 127.5), ("nonzero", values > 0)):
        spec = EditSpec("a blue square", image=str(tmp_path / "img.png"), source="a red square",
                        masks=(str(tmp_path / "m.png"),), mask_rule=rule)
        mask = api.read_inputs(spec).mask[0, 0].numpy() > 0.5
        assert np.array_equal(mask, expected), rule
        again = parse_edit(build_parser().parse_args(["edit", *spec.argv()]))
        assert again.mask_rule == rule
