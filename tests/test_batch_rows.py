"""The sampling loop leaves out an unconditional row only where its result is known or unused, and
the edit comes out the same as with the full CFG batch (in float64, where a different batch size
cannot change the rounding, exactly the same)."""

from collections import Counter

import pytest
import torch

from locedit import pipeline
from locedit.attention import AttentionController, Chain
from locedit.control import LocalBlendOptions, P2POptions
from locedit.methods import P2P, EditRequest, P2PEditOptions

SRC = "a red square on the gray background"
TGT = "a blue square on the gray background"


@pytest.fixture(scope="module")
def bundle64():
    from locedit.diffusion.tiny import tiny_bundle

    return tiny_bundle(seed=0, dtype=torch.float64)


def _controller(bundle, steps):
    request = EditRequest(SRC, TGT, blend_words=("square", "square"), num_steps=steps)
    opts = P2PEditOptions(P2POptions(mode="refine"), LocalBlendOptions())
    P2P.check(bundle, request, opts)
    return P2P.build(bundle, request, opts).controller


class ReadsEverything(AttentionController):
    """Declares nothing about its rows (reads = writes = None): the loop must keep every row."""


def _batches(bundle):
    seen = Counter()
    hook = bundle.unet.register_forward_pre_hook(lambda m, args: seen.update([args[0].shape[0]]))
    return seen, hook


@pytest.mark.parametrize("inversion,pruned", [("direct", True), ("npi", True), ("ddim", False), ("null-text", False)])
def test_rows_left_out_only_when_known_or_unused_and_the_edit_is_unchanged(bundle64, image, inversion, pruned):
    bundle = bundle64
    traj = pipeline.invert(bundle, image.double(), SRC, inversion, num_steps=5)
    seen, hook = _batches(bundle)
    try:
        fast = pipeline.sample(bundle, traj, [SRC, TGT], controller=_controller(bundle, 5))
        fast_batches = dict(seen)
        seen.clear()
        full = pipeline.sample(bundle, traj, [SRC, TGT], controller=Chain([_controller(bundle, 5), ReadsEverything()]))
    finally:
        hook.remove()
    assert fast_batches == ({3: 5} if pruned else {4: 5})
    assert dict(seen) == {4: 5}
    assert torch.equal(fast.latents, full.latents)
    assert torch.equal(fast.blend_mask, full.blend_mask) and fast.blend_mask.sum() > 0


def test_proximal_guidance_keeps_the_pinned_source_row(bundle, image):
    """The proximal threshold is a quantile over every row's guidance difference: with direct
    inversion the source's unconditional row then matters and stays."""
    traj = pipeline.invert(bundle, image, SRC, "direct", num_steps=4)
    seen, hook = _batches(bundle)
    try:
        pipeline.sample(bundle, traj, [SRC, TGT], pipeline.EditOptions(proximal_quantile=0.7),
                        controller=_controller(bundle, 4))
    finally:
        hook.remove()
    assert dict(seen) == {4: 4}


def test_npi_reconstruction_is_one_row(bundle64, image):
    """With the source prompt as the null embedding, CFG on the source alone is its conditional
    prediction: one row instead of two, the same reconstruction."""
    bundle = bundle64
    traj = pipeline.invert(bundle, image.double(), SRC, "npi", num_steps=4)
    seen, hook = _batches(bundle)
    try:
        rec = pipeline.reconstruct(bundle, traj)
    finally:
        hook.remove()
    assert dict(seen) == {1: 4}
    full = pipeline.sample(bundle, traj, [SRC], controller=ReadsEverything())
    assert torch.equal(rec.latents, full.latents)


def test_edit_decodes_the_source_only_when_asked(bundle, image):
    res = pipeline.edit(bundle, image, SRC, TGT, inversion="direct", num_steps=3)
    assert res._source is None
    torch.testing.assert_close(res.source, bundle.decode_latents(res.sample.latents[0:1]))
