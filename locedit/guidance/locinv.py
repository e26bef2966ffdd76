"""LocInv: localization-aware inversion (Tang et al., 2024), on top of null-text inversion.

Per-timestep noun tokens are learned so that their cross-attention matches given localisation
priors (segmentation masks or boxes); editing then runs P2P with those tokens.

1. DDIM inversion with guidance 1 gives the pivot trajectory z*_0..z*_N.
2. Each noun gets a learnable input-token vector per token of the word, initialised from its
   embedding row; only these vectors are optimised (the embedding table is never touched).
3. For each sampling step i, from z_N = z*_N: up to ``max_inner`` (31) AdamW steps (lr 1e-3,
   wd 1e-2) on the vectors, one conditional UNet call each (no CFG), stopping as soon as every loss
   is below its threshold tau(i) = beta * exp(-i / alpha) (tested before each update; the result
   of the last update is not evaluated, as in the code); the vectors carry over to the next step
   and are stored per step. Then null-text inversion for this step (guidance 7.5) with the learned
   condition, and the CFG DDIM step.

Losses (A_k the noun's map at the map level, S_k its prior, B_k its box):
similarity (seg) 1 - mean cos(A_k, S_k); (box) mean cos(A_k, 1 - B_k); overlap
1 - mean sum(A_k S_k) / sum(A_k); adjective binding 1 - mean cos(A_adj, A_noun).
Hyperparameters are the authors' scripts' (see :data:`LOCINV_DEFAULTS`).

Paper vs. the authors' code (wangkai930418/DPL, ``docs/conformance.md``):
- adjective binding is applied "only when Adjective-Edit is demanded" (Sec. 3.4); the code binds
  only with ``--adj_bind``, off in its scripts. Here: off unless pairs are given (``--bind``) or
  ``adj_bind`` asks for automatic pairs (both presets).
- the per-step null-text: the paper uses NTI (Sec. 3.3: the null embedding carries over, early
  stop; ``nti_mode="carry"``, the default); the code restarts from the empty prompt's embedding at
  every step and runs 31 iterations without early stop (``nti_mode="restart"``, preset official).
- box priors: the defaults follow the older commit's shell scripts (alpha/beta/lambda 25/0.5/0.1
  for similarity, 25/0.5/1 for overlap); the current det script's defaults, which are the seg
  values, are ``box_defaults="det-script"``.
- the seg script's "corner" KL term has weight 0 in every released run and is not built.
- the image's latent: the paper's encoder E(x) (the posterior mean, ``encode="mean"``); the code
  samples the posterior with ``torch.manual_seed(0)`` (``_2_DDIM_inv.py``; ``encode="sample"``,
  preset official).
- priors at the map size: the paper is silent; the code reads them with Pillow's default (bicubic)
  resize to 16x16 and counts every non-zero cell (``prior_resize="pil-nonzero"``, both presets;
  ``"area"``, the soft cell means, was this module's earlier reading).
- the placeholder token's start: the code's ``tokenizer.encode(list)`` takes the bare vocabulary
  entry ("cat", CLIP's sub-word piece; the unknown token when absent) instead of the word's token
  "cat</w>" that its comment and the paper name: a plain bug, not reproduced; here each vector
  starts from the word's own token embedding.
- the code replaces the noun by one placeholder token; here each token of the noun gets its own
  vector (the same for nouns of one token, the case of every released run).

Layering note: LocInv is an inversion driven by guidance losses, so this module uses null-text
inversion's per-step optimiser from ``locedit.inversion``; the inversion package never imports
guidance.
"""

from __future__ import annotations

import math
import time

import torch

from ..attention import BatchLayout, controlled_attention, map_level, unet_sites
from ..diffusion import ModelBundle
from ..diffusion.cfg import cfg
from ..diffusion.text import token_positions, word_tokens
from ..errors import LoceditError, OptimisationError, PromptError
from ..inversion import Trajectory, ddim_latents
from ..inversion.null_text import optimise_null
from ..masks import Region, check_mask
from ..progress import Progress, track
from . import losses as L
from .loop import MapCapture, MapsOnly, map_mask_from
from .options import (BOX_DEFAULTS, ENCODE_SEED, LOCINV_DEFAULTS, NTI_MODES, PAIR_SOURCES,  # noqa: F401 (re-exported)
                      RESTART_ITERATIONS, LocInvOptions)

def threshold(i: int, alpha: float, beta: float) -> float:
    """tau(i) = beta * exp(-i / alpha) (LocInv, per-step loss thresholds)."""
    return beta * math.exp(-i / alpha)


# ---- adjective-noun pairs ---------------------------------------------------------------------------
_NOT_ADJECTIVES = {"a", "an", "the", "of", "on", "in", "and", "with", "to", "at", "by", "for", "from", "is", "are"}


def previous_token_pairs(prompt: str, nouns: list[str], skip_function_words: bool = True) -> list[tuple[str, str]]:
    """The word before each noun: locedit's rule skips a noun whose previous word is an article or a
    preposition (``skip_function_words``); the authors' code binds whatever precedes it, 'a' and
    'with' too (``pair_source="preceding"``, ``--preset official``)."""
    words = [w.strip(",.").lower() for w in prompt.split()]
    pairs = []
    for noun in nouns:
        n = noun.split()[0].lower()
        if n in words:
            k = words.index(n)
            if k > 0 and not (skip_function_words and words[k - 1] in _NOT_ADJECTIVES):
                pairs.append((words[k - 1], noun))
    return pairs


def parser_pairs(prompt: str, nouns: list[str]) -> list[tuple[str, str]] | None:
    """Adjective-noun pairs from spaCy's dependency parse (amod), or None when spaCy or its English
    model is not installed."""
    try:
        import spacy

        nlp = spacy.load("en_core_web_sm")
    except Exception:
        return None
    doc = nlp(prompt)
    wanted = {n.lower() for n in nouns}
    return [(t.text.lower(), t.head.text.lower()) for t in doc if t.dep_ == "amod" and t.head.text.lower() in wanted]


def adjective_pairs(prompt: str, nouns: list[str], user: list[tuple[str, str]], source: str = "auto"):
    """(pairs, where they came from)."""
    if user or source == "user":
        return list(user), "user"
    if source == "preceding":
        return previous_token_pairs(prompt, nouns, skip_function_words=False), "preceding"
    if source in ("auto", "parser"):
        found = parser_pairs(prompt, nouns)
        if found is not None:
            return found, "parser"
        if source == "parser":
            raise LoceditError("pair_source 'parser' needs spaCy with en_core_web_sm installed")
    return previous_token_pairs(prompt, nouns), "previous"


# ---- the inversion ------------------------------------------------------------------------------------
def prior_kind(regions: list[Region]) -> str:
    """"box" when every prior is an axis-aligned filled rectangle, else "seg"."""
    for r in regions:
        m = r.mask[0, 0] > 0.5
        ys, xs = torch.nonzero(m, as_tuple=True)
        if m[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all().item() is False:
            return "seg"
    return "box"


def _checked(bundle: ModelBundle, prompt: str, regions: list[Region], pairs, options: LocInvOptions):
    """Every check of :func:`locinv_inversion` before a UNet call; returns (prior kind, loss
    hyper-parameters, nouns, adjective-noun pairs, where the pairs came from)."""
    if not regions:
        raise LoceditError("locinv needs at least one noun region: --region NOUN=MASK.png (or NOUN=x0,y0,x1,y1)")
    size = (bundle.image_size, bundle.image_size)
    for r in regions:
        try:
            token_positions(bundle.tokenizer, prompt, r.word)
        except PromptError:
            raise PromptError(f"region word {r.word!r} is not in the source prompt {prompt!r}") from None
        check_mask(r.mask, size, f"mask of region {r.word!r}")
    if len(regions) > len(word_tokens(bundle.tokenizer, prompt)):
        raise PromptError(f"{len(regions)} regions but the prompt has only {len(prompt.split())} words")
    kind = prior_kind(regions)
    nouns = [r.word for r in regions]
    if pairs or options.adj_bind:
        pair_list, pair_from = adjective_pairs(prompt, nouns, list(pairs), options.pair_source)
    else:
        pair_list, pair_from = [], "off"
    for adj, noun in pair_list:
        token_positions(bundle.tokenizer, prompt, adj)
        if noun not in nouns:
            raise PromptError(f"adjective {adj!r} is bound to {noun!r}, which has no region")
    return kind, options.params(kind), nouns, pair_list, pair_from


class TokenStep:
    """The token learning of one step (Alg. 1, lines 4-9): AdamW on the nouns' (and bound adjectives')
    input-token vectors until every loss is under its threshold or ``max_inner`` updates are taken."""

    def __init__(self, bundle, capture, maps_only, prompt, pos_vectors, noun_tokens, adj_tokens, nouns, pair_list,
                 priors, kind, hp, options):
        self.bundle, self.capture, self.maps_only, self.prompt, self.pos_vectors = bundle, capture, maps_only, prompt, pos_vectors
        self.noun_tokens, self.adj_tokens, self.nouns, self.pair_list = noun_tokens, adj_tokens, nouns, pair_list
        self.priors, self.kind, self.hp, self.options = priors, kind, hp, options

    def losses(self, maps: torch.Tensor, capture) -> dict[str, torch.Tensor]:
        """Similarity and overlap of the nouns' maps (K, P) with their priors; the adjective loss of the pairs."""
        priors = self.priors
        parts = {
            "sim": L.similarity_loss_seg(maps, priors) if self.kind == "seg" else L.similarity_loss_box(maps, priors),
            "ov": L.overlap_loss(maps, priors),
        }
        if self.pair_list:
            adj_maps = torch.stack([capture.word_map(t) for t in self.adj_tokens])
            noun_maps = torch.stack([maps[self.nouns.index(n)] for _, n in self.pair_list])
            parts["adj"] = L.adjective_loss(adj_maps, noun_maps)
        return parts

    def __call__(self, z, s, vectors, taus):
        """(learned vectors, first losses, last losses, updates) at sampling step ``s`` on latent ``z``."""
        options, capture, bundle = self.options, self.capture, self.bundle
        params = {w: v.clone().requires_grad_(True) for w, v in vectors.items()}
        opt = torch.optim.AdamW(list(params.values()), lr=options.lr, weight_decay=options.weight_decay)
        first, last, it = None, None, 0
        for it in range(options.max_inner + 1):
            if it == options.max_inner and it > 0:
                break  # the last update is taken; evaluating it would only feed the statistics (the code stops too)
            capture.clock.set(s.index, s.t, "guide")
            capture.begin()
            with torch.enable_grad():
                cond = bundle.encode_text_with_tokens(self.prompt, self.pos_vectors(params))
                self.maps_only.run(bundle, lambda: bundle.predict(z, s, cond))
                parts = self.losses(torch.stack([capture.word_map(t) for t in self.noun_tokens]), capture)  # (K, P)
                values = {k: v.item() for k, v in parts.items()}
                if any(not math.isfinite(v) for v in values.values()):
                    raise OptimisationError(f"locinv: a loss became NaN or inf at step {s.index}")
                first = first or values
                last = values
                if all(values[k] < taus[k] for k in values) or options.max_inner == 0:
                    break
                total = sum(self.hp[k][2] * v for k, v in parts.items())
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
        capture.end()
        return {w: p.detach().clone() for w, p in params.items()}, first, last, it


def locinv_inversion(bundle: ModelBundle, z0: torch.Tensor, prompt: str, regions: list[Region], num_steps: int,
                     guidance: float = 7.5, pairs: list[tuple[str, str]] = (), options: LocInvOptions = LocInvOptions(),
                     progress: Progress | None = None, stop_at_maps: bool = True) -> Trajectory:
    """Learn per-step noun tokens for ``regions`` (noun word + prior mask at the model's size).
    ``stop_at_maps`` ends each token-learning forward at the last map-level site (:class:`MapsOnly`;
    the same losses and tokens; False runs the whole UNet, as the authors' code does)."""
    kind, hp, nouns, pair_list, pair_from = _checked(bundle, prompt, regions, pairs, options)

    t0, start_calls = time.perf_counter(), bundle.unet_calls
    cond0, null = bundle.encode_text([prompt, ""]).split(1)
    empty = null
    latents = ddim_latents(bundle, z0, cond0, num_steps, progress, "locinv: ddim inversion")
    sampler = bundle.sampler
    level = map_level(unet_sites(bundle.unet))
    side = bundle.unet.config.sample_size // 2**level
    priors = torch.stack([map_mask_from(r.mask, side, options.prior_resize) for r in regions]).to(bundle.device)  # (K, P)

    ids = bundle.tokenizer(prompt).input_ids
    positions = {r.word: token_positions(bundle.tokenizer, prompt, r.word) for r in regions}
    vectors = {w: bundle.input_token_vectors([ids[p] for p in pos]) for w, pos in positions.items()}
    noun_tokens = [positions[w] for w in nouns]
    adj_tokens = [token_positions(bundle.tokenizer, prompt, a) for a, _ in pair_list]
    capture = MapCapture(level, branch="source")
    capture.layout = BatchLayout.single(("source",))
    capture.clock.num_steps = num_steps

    def pos_vectors(vs):
        return {p: vs[w][k] for w, pos in positions.items() for k, p in enumerate(pos)}

    stored = {w: [] for w in nouns}
    nulls, z = [], latents[-1]
    history = {"iterations": [], "sim_first": [], "sim_last": [], "ov_first": [], "ov_last": [], "adj_first": [], "adj_last": []}
    maps_only = MapsOnly((capture,), enabled=stop_at_maps)
    learn = TokenStep(bundle, capture, maps_only, prompt, pos_vectors, noun_tokens, adj_tokens, nouns, pair_list, priors,
                      kind, hp, options)
    with controlled_attention(bundle.unet, capture):
        for s in track(progress, sampler.schedule(num_steps), "locinv"):
            i, t = s.index, s.t
            taus = {k: threshold(i, v[0], v[1]) for k, v in hp.items()}
            vectors, first, last, it = learn(z, s, vectors, taus)
            for w in nouns:
                stored[w].append(vectors[w])
            history["iterations"].append(it)
            for k in ("sim", "ov", "adj"):
                if k in first:
                    history[f"{k}_first"].append(first[k])
                    history[f"{k}_last"].append(last[k])
            capture.clock.set(i, t, "invert")
            with torch.no_grad():
                cond = bundle.encode_text_with_tokens(prompt, pos_vectors(vectors))
                cond_eps = bundle.predict(z, s, cond)
            restart = options.nti_mode == "restart"
            null = optimise_null(bundle, z, latents[num_steps - i - 1], cond_eps, empty if restart else null, s,
                                 guidance, lr=options.nti.lr * (1 - options.nti.lr_decay * i),
                                 inner_steps=options.restart_iterations if restart else options.nti.inner_steps,
                                 threshold=float("-inf") if restart else options.nti.epsilon + i * options.nti.epsilon_growth,
                                 step=i)
            nulls.append(null)
            with torch.no_grad():
                z = sampler.step(z, cfg(bundle.predict(z, s, null), cond_eps, guidance), s)
    stats = {"prior": kind, "pairs": [list(p) for p in pair_list], "pairs_from": pair_from,
             "unet_calls": bundle.unet_calls - start_calls, "seconds": time.perf_counter() - t0,
             **{k: v for k, v in history.items() if v}}
    return Trajectory("locinv", prompt, num_steps, guidance, latents, uncond="learned", null_embeddings=nulls,
                      stats=stats, model=bundle.name,
                      token_vectors={w: torch.stack(v) for w, v in stored.items()})
