import json

import numpy as np
import pytest
import torch

from conftest import write_png
from locedit.attention import BatchLayout, controlled_attention
from locedit.attention import Chain
from locedit.instruct import IP2P_LAYOUT, IP2POptions, LIMEOptions, content_tokens, instruct_edit, lime_edit
from locedit.instruct.lime import (
    AttentionRegularizer,
    cluster,
    cluster_gram,
    feature_hooks,
    fuse_features,
    fused_gram,
    localize,
    region_of_interest,
)
from locedit.attention import AttentionController

INSTR = "make the square blue"
OPTS = LIMEOptions(points=10, clusters=4)


@pytest.fixture(scope="module")
def localized(instruct_bundle, image):
    return localize(instruct_bundle, image, INSTR, 6, OPTS, seed=0)


def test_stop_words_are_dropped_and_content_words_kept(instruct_bundle):
    tok = instruct_bundle.tokenizer
    kept = content_tokens(tok, "make the square blue and the circle red")
    words = [tok.decode([tok("make the square blue and the circle red").input_ids[p]]) for p in kept]
    assert {"square", "blue", "circle", "red"} <= {w.strip() for w in words}
    assert not {"the", "and"} & {w.strip() for w in words}


def test_fused_features_have_unit_norm_per_pixel(localized, instruct_bundle):
    labels, attention, feats = localized.labels, localized.attention, localized.features
    side = instruct_bundle.image_size // 2
    assert localized.gram is None  # the tiny model has fewer channels than pixels: k-means on the features
    assert feats.ndim == 3 and feats.shape[1:] == (side, side)
    n_self = sum(1 for name in instruct_bundle.unet.attn_processors if "attn1" in name)
    assert feats.shape[0] >= n_self  # one block of channels per self-attention layer
    torch.testing.assert_close(feats.norm(dim=0), torch.ones(side, side), rtol=1e-5, atol=1e-5)
    assert labels.shape == (side, side) and attention.shape == (side, side)


def test_roi_is_a_union_of_whole_clusters_containing_the_top_points(localized):
    roi, labels, top = localized.roi, localized.labels, localized.top
    assert roi.flatten()[top].all()
    for lab in labels.unique():
        inside = roi[labels == lab]
        assert inside.all() or not inside.any()  # whole clusters only
    assert 0 < roi.sum() < roi.numel() or labels.unique().numel() == 1


@pytest.mark.parametrize("preset", ["paper", "official"])
def test_localisation_stops_after_its_windows_and_finds_the_same(instruct_bundle, image, preset):
    """The run stops after the last attention/feature step; what it records is the full run's."""
    import dataclasses

    from locedit.instruct.lime import localisation_steps
    from locedit.options import apply_preset

    opts = dataclasses.replace(apply_preset(OPTS, preset), drop_verbs=False)
    n = 12
    calls0 = instruct_bundle.unet_calls
    short = localize(instruct_bundle, image, INSTR, n, opts, seed=0)
    calls1 = instruct_bundle.unet_calls
    full = localize(instruct_bundle, image, INSTR, n, opts, seed=0, run_all=True)
    stop = localisation_steps(n, opts)
    assert stop < n  # both presets' windows end before the schedule does (official: step 4 of 12)
    assert calls1 - calls0 == stop and instruct_bundle.unet_calls - calls1 == n
    for a, b in zip(short[:6], full[:6]):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(short.latents, full.latents)  # it did stop early


def test_cluster_is_seeded():
    f = torch.nn.functional.normalize(torch.randn(5, 8, 8), dim=0)
    assert torch.equal(cluster(f, 3, seed=1), cluster(f, 3, seed=1))


def test_cluster_on_the_gram_embedding_equals_kmeans_on_the_features(localized):
    """The N-dimensional embedding has the features' distances, so scikit-learn's k-means gives the
    same labels as on the C-dimensional features (random clustered features and the real ones)."""
    from sklearn.cluster import KMeans

    g = torch.Generator().manual_seed(0)
    centres = torch.randn(6, 3000, generator=g)
    pts = centres[torch.randint(0, 6, (256,), generator=g)] + 0.6 * torch.randn(256, 3000, generator=g)
    synthetic = torch.nn.functional.normalize(pts, dim=1).T.reshape(3000, 16, 16)
    for feats, k in ((synthetic, 6), (localized.features[:, :16, :16], 4)):
        c, s, _ = feats.shape
        flat = feats.reshape(c, -1).double()
        flat = flat / flat.norm(dim=0, keepdim=True)
        assert flat.shape[1] <= c  # fewer pixels than channels: cluster() takes the Gram embedding
        direct = KMeans(n_clusters=k, n_init=3, random_state=0).fit_predict(flat.T.numpy())
        assert np.array_equal(cluster(flat.reshape(c, s, s), k, seed=0).flatten().numpy(), direct)
        gram = flat.T @ flat
        assert np.array_equal(cluster_gram(gram, s, k, seed=0).flatten().numpy(), direct)  # Cholesky embedding
        # a singular Gram (duplicated pixels): Cholesky fails, the eigen-embedding takes over
        dup = torch.cat([flat[:, : s * s // 2]] * 2, dim=1)
        labels = cluster_gram(dup.T @ dup, s, k, seed=0).flatten()
        assert torch.equal(labels[: s * s // 2], labels[s * s // 2 :])


def test_fused_gram_is_the_gram_of_the_fused_features(instruct_bundle, image):
    """Built layer by layer from the recorded store, without concatenating the features."""
    from locedit.instruct.lime import LocalisationRecorder

    side = 16
    rec = LocalisationRecorder(content_tokens(instruct_bundle.tokenizer, INSTR), side, (0.0, 1.0))
    with feature_hooks(instruct_bundle.unet, rec.clock, (0.0, 1.0), IP2P_LAYOUT.index("edit", "image"),
                       ("self", "cross")) as store:
        instruct_edit(instruct_bundle, image, INSTR, 2, IP2POptions(), torch.Generator().manual_seed(0), controller=rec)
    assert len(store) > 2
    feats = fuse_features(store, side).reshape(-1, side * side).double()
    torch.testing.assert_close(fused_gram(store, side), feats.T @ feats, rtol=1e-5, atol=1e-6)


class _Probe(AttentionController):
    def __init__(self):
        super().__init__()
        self.seen = []

    def wants(self, site):
        return site.kind == "cross"

    def edit_probs(self, probs, site):
        self.seen.append(probs.detach().clone())
        return probs


def test_regularisation_zeroes_unrelated_tokens_inside_the_roi_only(instruct_bundle, image):
    b = instruct_bundle
    roi = torch.zeros(32, 32, dtype=torch.bool)
    roi[8:20, 8:24] = True
    related = content_tokens(b.tokenizer, INSTR)
    reg = AttentionRegularizer(roi, related, b.max_tokens, (0.0, 1.0))
    probe, plain = _Probe(), _Probe()
    chain = Chain([reg, probe])
    chain.layout = IP2P_LAYOUT
    chain.clock.num_steps = 1
    plain.layout = IP2P_LAYOUT
    z = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    cond = b.encode_image_condition(image).expand(3, -1, -1, -1)
    emb = torch.cat([b.encode_text([INSTR]), b.encode_text(["", ""])])
    s = b.schedule(1)
    for ctrl in (chain, plain):
        with controlled_attention(b.unet, ctrl), torch.no_grad():
            b.predict_eps(z, s.timesteps[0], s.alphas[0], emb, cond)
    unrelated = torch.ones(b.max_tokens, dtype=torch.bool)
    unrelated[related] = False
    row = IP2P_LAYOUT.index("edit", "image+text")
    assert len(probe.seen) == len(plain.seen) > 1
    for k, (p, q) in enumerate(zip(probe.seen, plain.seen)):
        side = int(round(p.shape[2] ** 0.5))
        pix = reg.roi_at(side, p.device)
        assert pix.any() and (~pix).any()
        assert torch.all(p[row][:, pix][:, :, unrelated] == 0)  # exactly zero, every layer
        assert torch.all(p[row][:, pix][:, :, ~unrelated].sum(-1) > 0.999)  # still a distribution
        if k == 0:  # the first layer sees the same input in both runs: outside the RoI nothing changes
            assert torch.equal(p[row][:, ~pix], q[row][:, ~pix])
            assert torch.equal(p[row + 1 :], q[row + 1 :])  # nor in the other rows


def test_empty_roi_equals_plain_ip2p_bitwise(instruct_bundle, image):
    reg = AttentionRegularizer(torch.zeros(32, 32, dtype=torch.bool), [2, 3], instruct_bundle.max_tokens, (0.0, 1.0))
    g = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    a = instruct_edit(instruct_bundle, image, INSTR, 4, IP2POptions(), g(), controller=reg)
    b = instruct_edit(instruct_bundle, image, INSTR, 4, IP2POptions(), g())
    assert torch.equal(a, b)


def test_user_mask_replaces_the_found_roi(instruct_bundle, image):
    m = torch.zeros(1, 1, 64, 64)
    m[..., 0:32, 0:32] = 1
    res = lime_edit(instruct_bundle, image, INSTR, 3, OPTS, mask=m)
    assert res.labels is None and res.roi[:16, :16].all() and not res.roi[16:, 16:].any()


# ---- CLI -----------------------------------------------------------------------------------------
def test_instruct_cli_lime_and_ip2p(instruct_dir, scene_png, tmp_path, capsys):
    from locedit.cli import main

    img, _ = scene_png
    out, roi = tmp_path / "o.png", tmp_path / "roi.png"
    capsys.readouterr()
    code = main(["instruct", img, "--instruction", INSTR, "--model", str(instruct_dir), "--steps", "4",
                 "--points", "5", "--clusters", "3", "--save-roi", str(roi), "--out", str(out), "--json", "--quiet"])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["method"] == "lime" and 0 < summary["roi_fraction"] <= 1
    from PIL import Image

    assert Image.open(out).size == (80, 48) and Image.open(roi).size == (80, 48)
    code = main(["instruct", img, "--instruction", INSTR, "--model", str(instruct_dir), "--steps", "2",
                 "--method", "ip2p", "--out", str(tmp_path / "p.png"), "--quiet"])
    assert code == 0


@pytest.mark.parametrize("case", ["t2i-model", "empty-mask", "missing", "stopwords-only"])
def test_instruct_bad_input(case, instruct_dir, model_dir, scene_png, tmp_path, capsys):
    from locedit.cli import main

    img, _ = scene_png
    argv = ["instruct", img, "--instruction", INSTR, "--model", str(instruct_dir), "--steps", "2", "--quiet"]
    needle = {"t2i-model": "not an InstructPix2Pix", "empty-mask": "empty", "missing": "does not exist",
              "stopwords-only": "no content word"}[case]
    if case == "t2i-model":
        argv[argv.index(str(instruct_dir))] = str(model_dir)
    elif case == "empty-mask":
        argv += ["--mask", write_png(tmp_path / "e.png", np.zeros((48, 80), np.uint8))]
    elif case == "missing":
        argv[1] = str(tmp_path / "nope.png")
    else:
        argv[argv.index(INSTR)] = "the and of"
    out = tmp_path / "o.png"
    capsys.readouterr()
    code = main(argv + ["--out", str(out)])
    _, err = capsys.readouterr()
    assert code == 2 and err.startswith("error:") and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
