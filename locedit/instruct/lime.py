"""LIME: localized image editing for InstructPix2Pix (Simsar et al., 2024), no mask, no training.

1. Localisation (paper Sec. 3.1), during a plain IP2P run:
   - features: the outputs of the self-attention layers of the image-conditioned row
     (eps(c_I, 0)) at every resolution, averaged over the feature steps, bilinearly resized to a
     common side, concatenated over layers and L2-normalised per pixel; k-means (k = 8,
     scikit-learn, seeded) clusters the pixels;
   - attention: the cross-attention of the instruction tokens in the text row (eps(c_I, c_T)),
     averaged over heads, layers, attention steps and the kept tokens (tested one by one as the
     code does: start-of-text, stop words, punctuation and padding are ignored; the end token is
     kept, as the code keeps it: ``keep_end_token``);
   - the RoI is the union of the clusters that the top ``points`` attention pixels fall in (100 at a
     512-pixel image, the same fraction of the image at other sizes: :func:`points_at`).
2. Edit (Sec. 3.2, Eq. 3): IP2P again from the same noise; during the regularised steps, in every
   cross-attention layer and (by default, the code's) all three guidance rows, the logits of
   unrelated tokens (the start token, stop words and padding; ``padding_related`` keeps padding,
   locedit's option) are set to -inf at RoI pixels (the RoI resized to each layer by nearest pixel),
   so their probability there is exactly zero. A user mask may replace the found RoI.

Defaults are the paper's where it is explicit: 100 steps, features fused from every resolution
(Fig. 2: 16, 32 and 64) taken over steps 30-50, attention from steps 1-75, top 100 points, s_I 1.5
and s_T 7.5 for localisation, s_T 3.5 for the edit, regularisation of every cross-attention layer
during steps 1-75, features at half the image side (256 of 512). Where the paper is silent they
are the authors' code's (enisimsar/LIME, ``pipeline.py``, ``utils.py``, ``lime.ipynb``): the
outputs of both self- and cross-attention layers of the image-only row as features, all three
guidance rows regularised with the end token counted as related, the checkpoint's Euler ancestral
sampler, one k-means initialisation, maps and features resized bilinearly with corners aligned
(``aggregate_attention``; 0.1 did not align them). One exception: the code also drops verbs (NLTK's tagger)
from the localisation tokens; that needs NLTK's tagger data, which cannot ship, so it is an option
(``drop_verbs``) and off by default.

``preset(LIMEOptions, "official")`` reproduces the notebook (run it with ``--steps 30``): features
and attention from every level coarser than the latent's (SD's 32x32, 16x16 and the 8x8 mid block:
its first call passes ``attn_res=16``, an int, which the store's ``np.prod`` turns into a 16-pixel
threshold; found side by side, ``bench/peers``), from one step (step 10 of 30, the last
of the localisation range), at a quarter of the image side; verbs dropped; top-1 point; s_T 5.5
then 2.0; regularisation of the cross-attention layers finer than "16x16" only, during steps 0-26.
Both readings ship our stop-word list (the code downloads NLTK's at import).
"""

from __future__ import annotations

import contextlib
import string
from dataclasses import dataclass
from importlib import resources
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..attention import AttentionController, Site, unet_sites
from ..diffusion import ModelBundle
from ..errors import LoceditError
from .ip2p import IP2P_LAYOUT, instruct_edit
from .options import FEATURES, REG_LEVELS, REG_ROWS, SITES, LIMEOptions  # noqa: F401 (re-exported)


def stop_words() -> frozenset[str]:
    text = resources.files("locedit.instruct").joinpath("stopwords.txt").read_text()
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip() and not w.startswith("#"))


def content_tokens(tokenizer, instruction: str, drop_verbs: bool = False, keep_end: bool = False,
                   drop_punctuation: bool = False) -> list[int]:
    """Token positions of the instruction that are not stop words, token by token as the authors'
    code tests them: each token decoded alone (the start token excluded) and looked up in the
    stop-word list (``get_effective_tokens``: the edit's related tokens); ``drop_punctuation`` also
    drops a token that is punctuation and ``drop_verbs`` the tokens NLTK's part-of-speech tagger marks
    as verbs (``locate_points``: the localisation's tokens). The end token only with ``keep_end``,
    as the code keeps it. (0.2 tested whole words and kept a trailing '.' token in the localisation.)"""
    stops = stop_words()
    ids = tokenizer(instruction).input_ids
    texts = [tokenizer.decode([i]).strip() for i in ids]
    verbs = _verbs(texts) if drop_verbs else set()
    out = []
    for k in range(1, len(ids) - 1):
        text = texts[k]
        if text.lower() in stops or k in verbs or (drop_punctuation and text in string.punctuation):
            continue  # ``in string.punctuation`` is the code's substring test
        out.append(k)
    if keep_end:
        out.append(len(ids) - 1)
    return out


def _verbs(tokens: list[str]) -> set[int]:
    """Indices of the tokens NLTK tags VB* (tagged in one sequence with the start and end tokens, as
    the code does); a one-line error when NLTK or its tagger data is missing."""
    try:
        import nltk

        tags = nltk.pos_tag(tokens)
    except (ImportError, LookupError):
        raise LoceditError("drop_verbs needs nltk with its tagger data (pip install nltk; python -m nltk.downloader "
                           "averaged_perceptron_tagger_eng)") from None
    return {k for k, (_, pos) in enumerate(tags) if pos.startswith("VB")}


def _window_steps(window, num_steps: int) -> tuple[int, int]:
    """Steps [lo, hi) of a fractional window over ``num_steps``: [round(lo N), round(hi N)), at least one step wide."""
    lo, hi = round(window[0] * num_steps), round(window[1] * num_steps)
    return lo, max(hi, lo + 1)


def _in_window(clock, window) -> bool:
    lo, hi = _window_steps(window, clock.num_steps)
    return lo <= clock.step < hi


def site_filter(unet, sites: str):
    """Which attention sites localisation reads: None for every site, else a predicate on
    :class:`Site`. "map-levels": the down/up sites at the map level and the next finer one (SD's
    16x16 and 32x32; the code's rule with ``attn_res=(16, 16)``); "below-latent": every site coarser
    than the latent resolution, the mid block's included (the notebook's first call passes
    ``attn_res=16``, an int, so its ``np.prod(attn_res)`` threshold is 16 pixels, not 16x16: the
    8x8 mid block is kept with the 16x16 and 32x32 levels)."""
    if sites == "all":
        return None
    if sites == "below-latent":
        return lambda site: site.level >= 1
    from ..attention import map_level

    level = map_level(unet_sites(unet))
    return lambda site: site.level in {level, level - 1} and site.place != "mid"


class LocalisationRecorder(AttentionController):
    """Collects the text row's cross-attention of the kept tokens during the attention steps.
    (Self-attention outputs are taken by forward hooks, see :func:`feature_hooks`.)"""

    def __init__(self, tokens: list[int], side: int, window, keep=None):
        super().__init__()
        self.tokens = list(tokens)
        self.side = side
        self.window = window
        self.keep = keep  # None: every site; else a predicate (:func:`site_filter`)
        self.sum = torch.zeros(side, side)
        self.count = 0

    def wants(self, site: Site) -> bool:
        return (site.kind == "cross" and _in_window(self.clock, self.window) and bool(self.tokens)
                and _at(site, self.keep))

    def edit_probs(self, probs, site):
        row = self.layout.index("edit", "image+text")
        s = int(round(probs.shape[2] ** 0.5))
        m = probs[row][:, :, self.tokens].mean(dim=(0, 2)).reshape(1, 1, s, s).float().detach().cpu()
        # bilinear with corners aligned, as the code's aggregate_attention resizes maps and features
        self.sum += F.interpolate(m, size=(self.side, self.side), mode="bilinear", align_corners=True)[0, 0]
        self.count += 1
        return probs

    def attention(self) -> torch.Tensor:
        return self.sum / max(self.count, 1)


def _at(site: Site, keep) -> bool:
    return keep is None or keep(site)


@contextlib.contextmanager
def feature_hooks(unet, clock, window, row: int, kinds=("self",), keep=None):
    """Forward hooks on the attention modules of ``kinds`` at the sites ``keep`` accepts (None: all,
    else a predicate, :func:`site_filter`); accumulates each output for batch ``row`` at its own
    resolution during the window's steps (resized to the fused side by :func:`fuse_features` after the
    run: resizing is linear, so the mean of resized maps is the resized mean, and the coarse levels
    take a fraction of the memory until then). Yields a dict site name -> [sum (1, C, g, g), count]."""
    sites = [s for s in unet_sites(unet) if s.kind in kinds and _at(s, keep)]
    modules = dict(unet.named_modules())
    store: dict[str, list] = {}
    handles = []
    for s in sites:
        module = modules[s.name[: -len(".processor")]]

        def hook(mod, args, output, name=s.name):
            if not _in_window(clock, window):
                return
            x = output[row].detach().float().cpu()  # (Q, C)
            q, c = x.shape
            g = int(round(q ** 0.5))
            x = x.transpose(0, 1).reshape(1, c, g, g)
            entry = store.setdefault(name, [torch.zeros_like(x), 0])
            entry[0] += x
            entry[1] += 1

        handles.append(module.register_forward_hook(hook))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


def fuse_features(store: dict[str, list], side: int) -> torch.Tensor:
    """(C_total, S, S): per-layer step averages, resized to ``side`` (bilinear, corners aligned, as
    the code's ``aggregate_attention``), concatenated, L2-normalised per pixel."""
    if not store:
        raise LoceditError("no features were recorded (the feature steps saw no UNet call)")
    feats = torch.cat([F.interpolate(s / max(n, 1), size=(side, side), mode="bilinear", align_corners=True)[0]
                       for s, n in store.values()], dim=0)
    return feats / feats.norm(dim=0, keepdim=True).clamp_min(1e-12)


def feature_side(bundle, options: LIMEOptions) -> int:
    return max(1, int(round(bundle.image_size * options.feature_scale)))


def feature_channels(store: dict[str, list]) -> int:
    """C: the fused features' channels (every recorded layer's, concatenated)."""
    return sum(entry[0].shape[1] for entry in store.values())


def fused_gram(store: dict[str, list], side: int) -> torch.Tensor:
    """(N, N) float64 Gram matrix of the fused, L2-normalised features (N = side^2 pixels), built
    layer by layer without concatenating the (C, N) features: G = sum_l X_l^T X_l over the resized
    step averages X_l (float32 products, as the code's GPU k-means works in, summed in float64),
    then D^-1/2 G D^-1/2 with D = diag(G), which is the Gram of the per-pixel normalised features.
    Memory N^2 instead of C x N (C is tens of thousands on SD)."""
    if not store:
        raise LoceditError("no features were recorded (the feature steps saw no UNet call)")
    n = side * side
    gram = torch.zeros(n, n, dtype=torch.float64)
    for s, count in store.values():
        x = F.interpolate(s / max(count, 1), size=(side, side), mode="bilinear", align_corners=True)[0].reshape(-1, n)
        for rows in range(0, n, 1024):  # row blocks: no N x N float32 temporary
            gram[rows : rows + 1024] += (x[:, rows : rows + 1024].T @ x).double()
    d = gram.diagonal().clamp_min(1e-24).sqrt()
    return gram.div_(d[:, None]).div_(d[None, :])


def _kmeans(points: np.ndarray, k: int, seed: int, n_init: int) -> np.ndarray:
    from sklearn.cluster import KMeans

    return KMeans(n_clusters=min(k, points.shape[0]), n_init=n_init, random_state=seed, copy_x=False).fit_predict(points)


def cluster_gram(gram: torch.Tensor, side: int, k: int, seed: int = 0, n_init: int = 3) -> torch.Tensor:
    """k-means labels (S, S) of N pixels given only their features' Gram matrix G (float64).

    k-means reads the points only through their distances (k-means++ draws by distance, Lloyd's
    steps assign by distance to means), so it runs on any embedding of the N pixels with the same
    pairwise distances: the rows of L in G = L L^T (Cholesky), or of Q diag(sqrt(l)) from
    G = Q diag(l) Q^T where G is singular to working precision (Cholesky fails). The same clusters as
    k-means on the features themselves (tested); Cholesky costs N^3 / 3, a tenth of the
    eigendecomposition (0.5 s against 10 s at N = 4096 on the 2-core CPU)."""
    return _labels(gram_embedding(gram), side, k, seed, n_init)


def gram_embedding(gram: torch.Tensor) -> np.ndarray:
    """(N, N) C-ordered float64 rows with the distances of the points whose Gram matrix is ``gram``
    (see :func:`cluster_gram`)."""
    try:
        y = torch.linalg.cholesky(gram)
    except RuntimeError:  # torch.linalg.LinAlgError: not positive definite
        evals, evecs = torch.linalg.eigh(gram)
        y = evecs * evals.clamp_min(0).sqrt()
    return np.ascontiguousarray(y.numpy())


def _labels(points: np.ndarray, side: int, k: int, seed: int, n_init: int) -> torch.Tensor:
    return torch.from_numpy(_kmeans(points, k, seed, n_init).reshape(side, side).astype(np.int64))


def cluster(features: torch.Tensor, k: int, seed: int = 0, n_init: int = 3) -> torch.Tensor:
    """k-means labels (S, S) of the fused features' (C, S, S) pixels (scikit-learn, seeded): on the
    features themselves when there are more pixels than channels, else on the Gram embedding
    (:func:`cluster_gram`, the same labels in N^2 memory)."""
    c, s, _ = features.shape
    x = features.reshape(c, -1)  # (C, N)
    if x.shape[1] > c:
        return torch.from_numpy(_kmeans(x.T.double().numpy(), k, seed, n_init).reshape(s, s).astype(np.int64))
    return cluster_gram(x.T.double() @ x.double(), s, k, seed, n_init)


def points_at(points: int, image_size: int) -> int:
    """The top attention points at ``image_size``: the paper's count is at a 512-pixel image (100 of
    256x256 fused pixels, 0.15% of them), kept as the same fraction of the image's area at other
    sizes (100 -> 2 at 64 px, 225 at 768 px; at least 1). Neither the paper nor the code runs
    another size; 0.2 took 100 at every size: 10% of a 64 px image's 32x32 fused pixels, so the RoI
    took most of the scene's clusters (issue 32)."""
    return max(1, round(points * image_size * image_size / 512 ** 2))


def region_of_interest(labels: torch.Tensor, attention: torch.Tensor, points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(RoI (S, S) bool, indices of the top points): union of the clusters hit by the top points."""
    flat = attention.flatten()
    top = flat.topk(min(points, flat.numel())).indices
    hit = labels.flatten()[top].unique()
    return torch.isin(labels, hit), top


class AttentionRegularizer(AttentionController):
    """LIME Eq. 3: logits of unrelated tokens at RoI pixels -> -inf, in the text row (``rows="text"``,
    the paper) or in all three guidance rows (``"all"``, the code), in every cross-attention layer
    or only those at ``levels``."""

    def __init__(self, roi: torch.Tensor, related: list[int], num_tokens: int, window, rows: str = "text",
                 levels: set[int] | None = None):
        super().__init__()
        self.roi = roi.float()  # (S, S)
        self.unrelated = torch.ones(num_tokens, dtype=torch.bool)
        self.unrelated[list(related)] = False
        self.window = window
        self.rows = rows
        self.levels = levels
        self._cache: dict[int, torch.Tensor] = {}

    def wants(self, site: Site) -> bool:
        return (site.kind == "cross" and bool(self.roi.any()) and _in_window(self.clock, self.window)
                and (self.levels is None or site.level in self.levels))

    def roi_at(self, side: int, device) -> torch.Tensor:
        """The RoI at a layer's map side: nearest pixel, as the code's ``cv2.resize(...,
        INTER_NEAREST)`` (source pixel floor(i * S / side), which is torch's "nearest"; 0.2 took an
        area average above 0.5)."""
        if side not in self._cache:
            m = F.interpolate(self.roi[None, None], size=(side, side), mode="nearest")[0, 0] > 0.5
            self._cache[side] = m.flatten().to(device)
        return self._cache[side]

    def edit_scores(self, scores, site):
        rows = [self.layout.index("edit", "image+text")] if self.rows == "text" else list(range(scores.shape[0]))
        side = int(round(scores.shape[2] ** 0.5))
        pix = self.roi_at(side, scores.device)  # (Q,)
        block = pix[:, None] & self.unrelated.to(scores.device)[None, :]  # (Q, K)
        scores = scores.clone()
        for row in rows:
            scores[row] = scores[row].masked_fill(block[None], float("-inf"))
        return scores


@dataclass
class LIMEResult:
    latents: torch.Tensor  # (1, C, h, w)
    roi: torch.Tensor  # (S, S) bool at the feature side
    labels: torch.Tensor | None  # (S, S) cluster labels (None with a user mask)
    attention: torch.Tensor | None  # (S, S)
    top_points: torch.Tensor | None
    tokens: list[int]


class Localisation(NamedTuple):
    """What the localisation run found: the RoI (S, S) bool, the cluster labels (S, S), the
    attention map (S, S), the top points' flat indices, the kept tokens, the fused features
    (channels, S, S) when k-means ran on them (more pixels than channels) else None, the run's own
    final latents (1, C, h, w) (plain IP2P; side by side with the authors' first pipeline call) -
    or, when it stopped after the last step it records (the default), the latents there - and the
    fused features' Gram matrix (N, N) when k-means ran on its embedding, else None."""

    roi: torch.Tensor
    labels: torch.Tensor
    attention: torch.Tensor
    top: torch.Tensor
    tokens: list[int]
    features: torch.Tensor | None
    latents: torch.Tensor
    gram: torch.Tensor | None = None


def localisation_steps(num_steps: int, options: LIMEOptions) -> int:
    """How many steps the localisation run needs: up to the end of its attention and feature windows."""
    return max(_window_steps(options.attention_steps, num_steps)[1], _window_steps(options.feature_steps, num_steps)[1])


def localize(bundle: ModelBundle, image: torch.Tensor, instruction: str, num_steps: int, options: LIMEOptions,
             seed: int, progress=None, run_all: bool = False) -> Localisation:
    """Run plain IP2P, recording features and attention (a :class:`Localisation`).

    The run stops after the last step of the attention and feature windows: the localisation reads
    nothing later, and the steps before are the same whether or not later ones follow, so the region
    found is the same as after a full run (the authors' code samples to the end, and its image is
    not used: the notebook's second call makes the edit). With the official windows (step 10 of 30)
    that is a third of the UNet calls. ``run_all`` samples the whole schedule (to compare the
    run's own output)."""
    tokens = content_tokens(bundle.tokenizer, instruction, options.drop_verbs, options.keep_end_token,
                            drop_punctuation=True)
    if not content_tokens(bundle.tokenizer, instruction, drop_punctuation=True):
        raise LoceditError(f"the instruction {instruction!r} has no content word (only stop words)")
    side = feature_side(bundle, options)
    keep = site_filter(bundle.unet, options.sites)
    rec = LocalisationRecorder(tokens, side, options.attention_steps, keep)
    kinds = ("self", "cross") if options.features == "self+cross" else ("self",)
    with feature_hooks(bundle.unet, rec.clock, options.feature_steps, IP2P_LAYOUT.index("edit", "image"),
                       kinds, keep) as store:
        z = instruct_edit(bundle, image, instruction, num_steps, options.localize_guidance,
                          torch.Generator().manual_seed(seed), controller=rec, progress=progress,
                          sampler=options.sampler, run_steps=None if run_all else localisation_steps(num_steps, options))
        if side * side > feature_channels(store):  # more pixels than channels: k-means on the features
            feats, gram = fuse_features(store, side), None
            labels = cluster(feats, options.clusters, options.seed, options.kmeans_init)
        else:  # the Gram embedding, never concatenating the features (fused_gram, cluster_gram)
            gram = fused_gram(store, side)
            store.clear()
            points = gram_embedding(gram)
            feats, gram = None, gram.float()  # kept for inspection (the side-by-side run compares it), half the size
            labels = _labels(points, side, options.clusters, options.seed, options.kmeans_init)
            del points
    roi, top = region_of_interest(labels, rec.attention(), points_at(options.points, bundle.image_size))
    return Localisation(roi, labels, rec.attention(), top, tokens, feats, z, gram)


def lime_edit(bundle: ModelBundle, image: torch.Tensor, instruction: str, num_steps: int = 100,
              options: LIMEOptions = LIMEOptions(), seed: int = 0, mask: torch.Tensor | None = None,
              progress=None) -> LIMEResult:
    """Localise (or take ``mask`` (1, 1, S, S)) and edit with attention regularisation."""
    if not content_tokens(bundle.tokenizer, instruction):
        raise LoceditError(f"the instruction {instruction!r} has no content word (only stop words)")
    if mask is not None:
        side = feature_side(bundle, options)
        roi = F.interpolate(mask.float(), size=(side, side), mode="area")[0, 0] > 0.5
        labels = attention = top = None
    else:
        found = localize(bundle, image, instruction, num_steps, options, seed, progress)
        roi, labels, attention, top = found.roi, found.labels, found.attention, found.top
    # the edit's related tokens: every non-stop token (verbs and punctuation included), the end token as
    # the code keeps it; the padding positions only when asked (a locedit option)
    related = content_tokens(bundle.tokenizer, instruction, keep_end=options.keep_end_token)
    if options.padding_related:
        related += list(range(len(bundle.tokenizer(instruction).input_ids), bundle.max_tokens))
    levels = None
    if options.regularize_levels == "finer-than-map":
        from ..attention import map_level

        levels = set(range(map_level(unet_sites(bundle.unet))))
    reg = AttentionRegularizer(roi.cpu(), related, bundle.max_tokens, options.regularize_steps,
                               options.regularize_rows, levels)
    z = instruct_edit(bundle, image, instruction, num_steps, options.edit_guidance,
                      torch.Generator().manual_seed(seed), controller=reg if roi.any() else None, progress=progress,
                      sampler=options.sampler)
    return LIMEResult(z, roi, labels, attention, top, related)
