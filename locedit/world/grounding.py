"""Token grounding for training the shapes models: each object word's cross-attention inside its object.

Editing methods read a word's cross-attention map as "where the word is" (P2P's local blend,
MAG-Edit's and MDE-Edit's losses, LocInv's priors, LIME's localisation). Stable Diffusion's maps
localise because CLIP's token embeddings were pretrained to mean their words; a text encoder trained
from scratch with the UNet on denoising alone need not do that, and the shapes v2 model does not:
with a causal encoder the caption can be read from its later tokens, and the first object's words
come out nearly the same vector, attended everywhere (the local blend of "triangle" covered the
whole image in 20 of 20 gate-5 edits).

TokenCompose (Wang et al., "TokenCompose: Text-to-Image Diffusion with Token-level Supervision",
CVPR 2024, Eq. 3) adds a grounding term to the denoising loss: for a token i with object mask M_i
and attention map A_i (averaged over heads) at a layer,

    L_token = (1 - sum_{u in M_i} A_i(u) / sum_u A_i(u)) ** 2,

averaged over grounded tokens and layers. Here the masks are exact (the world renders them): each
object's colour, texture and shape words are grounded in its visible mask, the background's colour
word and "background" in the pixels no object covers; masks are area-averaged to each map's side
(soft at edges). Their pixel-level BCE term (Eq. 4) is not used.

The same term grounds the instruct model's instructions (:func:`instruction_regions`): the words
naming an edited object and its new colour, shape or texture in the footprint the edit may change
(source and target), "background" and the new background colour in the background. TokenCompose
grounds captions only; this is the shapes world's own use of the term, to teach an instruction which
region it refers to.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..attention import AttentionController, SiteSelector
from .edits import Edit
from .scene import Scene, render

BACKGROUND = -1  # region index of the background in :func:`caption_regions`


def caption_regions(tokenizer, scene: Scene) -> list[tuple[int, int]]:
    """(token position, region) pairs for ``scene.caption()``: region k is ``scene.objects[k]``,
    :data:`BACKGROUND` the background. Positions count the start token, as the text encoder's rows."""
    find = _finder(scene.caption(), _words(tokenizer, scene.caption()))

    out, p = [], 1
    for obj in scene.ordered():
        k = scene.objects.index(obj)
        c = find(obj.colour, p)
        s = find(obj.shape, c + 1)
        out += [(c, k), (s, k)] + ([(c + 1, k)] if obj.texture == "striped" else [])
        p = s + 1
    b = find("background", p)
    out += [(b - 1, BACKGROUND), (b, BACKGROUND)]
    return out


def _words(tokenizer, text: str) -> list[str]:
    ids = tokenizer(text).input_ids
    return [w.removesuffix("</w>") for w in tokenizer.convert_ids_to_tokens(ids)]


def _finder(text: str, words: list[str]):
    def find(word: str, start: int) -> int:
        try:
            return words.index(word, start)
        except ValueError:
            raise ValueError(f"{word!r} not found after token {start} of {text!r}") from None

    return find


def instruction_regions(tokenizer, edit: Edit) -> list[tuple[int, int]]:
    """(token position, region) pairs for ``edit.instruction``: region j is ``edit.edited[j]``'s
    footprint (:meth:`Edit.object_masks`), :data:`BACKGROUND` the background (:meth:`Edit.mask` of a
    background edit). Grounded: the words naming each edited object (its colour where the instruction
    says it, its shape) and the object's new colour, shape or texture; "background" and the new
    background colour. "make", "turn", "the", "into", "a", "and" are not grounded."""
    words = _words(tokenizer, edit.instruction)
    find = _finder(edit.instruction, words)
    if not edit.edited:
        b = find("background", 1)
        return [(b, BACKGROUND), (find(edit.target.background, b + 1), BACKGROUND)]
    out, p = [], 1
    for j, k in enumerate(edit.edited):
        src, tgt = edit.source.objects[k], edit.target.objects[k]
        s = find(src.shape, p)
        named = [(s - 1, j)] if s - 1 >= p and words[s - 1] == src.colour else []
        new = next(getattr(tgt, f) for f in ("colour", "shape", "texture") if getattr(tgt, f) != getattr(src, f))
        n = find(new, s + 1)
        out += named + [(s, j), (n, j)]
        p = n + 1
    return out


def region_masks(scene: Scene, size: int) -> np.ndarray:
    """(n_objects + 1, size, size) float32: each object's visible mask, then the background, rendered
    at ``size``."""
    _, masks = render(scene, size)
    masks = np.stack(masks).astype(np.float32)
    return np.concatenate([masks, 1.0 - masks.max(0, keepdims=True)])


def edit_region_masks(edit: Edit, size: int) -> np.ndarray:
    """(n_edited + 1, size, size) float32: each edited object's footprint (source and target), then
    the source's background (the regions of :func:`instruction_regions`)."""
    objects = [m.astype(np.float32) for m in edit.object_masks(size)]
    return np.stack(objects + [region_masks(edit.source, size)[-1]])


def grounding_targets(tokenizer, items: list[Scene | Edit | None], num_tokens: int, size: int,
                      sides: tuple[int, ...]):
    """Per map side, (B, K, side*side) target masks for the K token rows, and (B, K) bool: which
    tokens are grounded. A scene grounds its caption (:func:`caption_regions`), an edit its
    instruction (:func:`instruction_regions`); ``None`` (the text dropped) grounds nothing."""
    b = len(items)
    grounded = torch.zeros((b, num_tokens), dtype=torch.bool)
    full = torch.zeros((b, num_tokens, size, size))
    for i, item in enumerate(items):
        if item is None:
            continue
        if isinstance(item, Edit):
            masks, pairs = edit_region_masks(item, size), instruction_regions(tokenizer, item)
        else:
            masks, pairs = region_masks(item, size), caption_regions(tokenizer, item)
        masks = torch.from_numpy(masks)
        for pos, region in pairs:
            full[i, pos] = masks[region]
            grounded[i, pos] = True
    targets = {side: F.adaptive_avg_pool2d(full, side).flatten(2) for side in sides}
    return targets, grounded


def token_grounding_loss(probs: torch.Tensor, target: torch.Tensor, grounded: torch.Tensor) -> torch.Tensor:
    """TokenCompose's L_token (Eq. 3) at one layer. ``probs`` (B, heads, Q, K) cross-attention
    probabilities; ``target`` (B, K, Q) mask of each token's region in [0, 1]; ``grounded`` (B, K)
    which tokens count. Returns the mean over grounded tokens (0 when none is)."""
    a = probs.float().mean(1).transpose(1, 2)  # (B, K, Q)
    inside = (a * target.to(a)).sum(-1) / a.sum(-1).clamp_min(1e-12)
    per_token = (1.0 - inside) ** 2
    g = grounded.to(per_token.device)
    if not g.any():
        return per_token.sum() * 0.0
    return per_token[g].mean()


class GroundingRecorder(AttentionController):
    """Keeps the cross-attention probabilities of the selected sites for one forward, graph and all
    (training only: the loss backpropagates through them)."""

    def __init__(self, selector: SiteSelector):
        super().__init__()
        self.selector = selector
        self.probs: list[torch.Tensor] = []

    def wants(self, site) -> bool:
        return self.selector(site)

    def edit_probs(self, probs, site):
        self.probs.append(probs)
        return probs


GROUNDED_SITES = SiteSelector(kinds=frozenset({"cross"}), places=frozenset({"down", "up"}))
