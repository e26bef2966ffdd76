"""Token grounding for training the shapes models (TokenCompose's L_token on exact world masks)."""

import json
import random

import pytest
import torch

from locedit.attention import controlled_attention
from locedit.world import train
from locedit.world.grounding import (
    BACKGROUND,
    GROUNDED_SITES,
    GroundingRecorder,
    caption_regions,
    edit_region_masks,
    grounding_targets,
    instruction_regions,
    region_masks,
    token_grounding_loss,
)
from locedit.world.edits import EDIT_KINDS, sample_edit
from locedit.world.scene import render, sample_scene


@pytest.fixture(scope="module")
def tokenizer():
    return train.make_tokenizer()


def _words(tokenizer, text):
    ids = tokenizer(text).input_ids
    return [w.removesuffix("</w>") for w in tokenizer.convert_ids_to_tokens(ids)]


def test_caption_regions_name_each_objects_own_words(tokenizer):
    rng = random.Random(7)
    scenes = [sample_scene(rng, n_objects=n) for n in (1, 2, 3) for _ in range(20)]
    assert any(o.texture == "striped" for s in scenes for o in s.objects)
    for scene in scenes:
        words = _words(tokenizer, scene.caption())
        pairs = caption_regions(tokenizer, scene)
        for k, obj in enumerate(scene.objects):
            mine = sorted(words[p] for p, r in pairs if r == k)
            expected = sorted([obj.colour, obj.shape] + (["striped"] if obj.texture == "striped" else []))
            assert mine == expected, scene.caption()
        assert sorted(words[p] for p, r in pairs if r == BACKGROUND) == sorted([scene.background, "background"])
        assert len({p for p, _ in pairs}) == len(pairs)  # no token grounded twice


def test_instruction_regions_name_each_edited_objects_words(tokenizer):
    rng = random.Random(11)
    edits = [sample_edit(rng, kind) for kind in EDIT_KINDS for _ in range(30)]
    assert any(e.source.objects[e.edited[0]].colour in e.instruction.split() for e in edits if e.kind == "shape")
    for e in edits:
        words = _words(tokenizer, e.instruction)
        pairs = instruction_regions(tokenizer, e)
        assert len({p for p, _ in pairs}) == len(pairs), e.instruction
        assert not {"make", "turn", "the", "into", "a", "an", "and"} & {words[p] for p, _ in pairs}
        if not e.edited:
            assert sorted(words[p] for p, _ in pairs) == sorted(["background", e.target.background])
            assert {r for _, r in pairs} == {BACKGROUND}
            continue
        for j, k in enumerate(e.edited):
            src, tgt = e.source.objects[k], e.target.objects[k]
            mine = [words[p] for p, r in pairs if r == j]
            new = {"colour": tgt.colour, "two": tgt.colour, "shape": tgt.shape, "texture": tgt.texture}[e.kind]
            named = [src.colour] if f"{src.colour} {src.shape}" in e.instruction else []
            assert mine == named + [src.shape, new], e.instruction


def test_edit_region_masks_are_footprints_then_background():
    e = sample_edit(random.Random(2), "two", n_objects=3)
    masks = edit_region_masks(e, 64)
    assert masks.shape == (3, 64, 64)
    for j, m in enumerate(e.object_masks(64)):
        assert (masks[j] == m).all()
    assert (masks[-1] == region_masks(e.source, 64)[-1]).all()
    bg = sample_edit(random.Random(2), "background")
    assert (edit_region_masks(bg, 64)[-1] == bg.mask(64)).all()


def test_region_masks_partition_the_image(tokenizer):
    scene = sample_scene(random.Random(3), n_objects=3, overlap=True)
    masks = region_masks(scene, 64)
    _, visible = render(scene, 64)
    assert masks.shape == (4, 64, 64)
    assert (masks.sum(0) == 1).all()  # visible masks do not overlap, the background takes the rest
    for k, m in enumerate(visible):
        assert (masks[k] == m).all()


def test_targets_are_area_averages_and_dropped_captions_ground_nothing(tokenizer):
    scene = sample_scene(random.Random(5), n_objects=2)
    targets, grounded = grounding_targets(tokenizer, [scene, None], 32, 64, (16, 8))
    assert grounded[1].sum() == 0 and grounded[0].sum() == len(caption_regions(tokenizer, scene))
    masks = torch.from_numpy(region_masks(scene, 64))
    for pos, region in caption_regions(tokenizer, scene):
        for side in (16, 8):
            cell = 64 // side
            want = masks[region].view(side, cell, side, cell).mean((1, 3)).flatten()
            torch.testing.assert_close(targets[side][0, pos], want)


def test_token_loss_is_tokencompose_eq3():
    # 4 pixels, 3 tokens; token 1's region is pixels {0, 1}; its attention puts 0.6 of its mass there
    a = torch.tensor([[0.2, 0.4, 0.4], [0.2, 0.2, 0.6], [0.5, 0.1, 0.4], [0.3, 0.3, 0.4]])  # (Q, K)
    probs = a[None, None].expand(1, 2, 4, 3)  # two identical heads
    target = torch.zeros(1, 3, 4)
    target[0, 1, :2] = 1.0
    grounded = torch.tensor([[False, True, False]])
    inside = (0.4 + 0.2) / (0.4 + 0.2 + 0.1 + 0.3)
    torch.testing.assert_close(token_grounding_loss(probs, target, grounded), torch.tensor((1 - inside) ** 2))
    # an ungrounded token's attention does not count; nothing grounded: zero
    grounded2 = torch.tensor([[True, True, False]])
    target[0, 0] = 1.0  # token 0 attended only inside its region (all pixels): loss 0 for it
    torch.testing.assert_close(token_grounding_loss(probs, target, grounded2), torch.tensor((1 - inside) ** 2 / 2))
    assert token_grounding_loss(probs, target, torch.zeros(1, 3, dtype=torch.bool)).item() == 0.0


def test_grounding_loss_trains_the_maps_into_the_objects(tokenizer):
    """Recorder, targets and loss together: descending the loss alone moves each grounded word's
    attention into its object, at every grounded site of a UNet of the shapes architecture."""
    torch.manual_seed(0)
    unet = train.make_unet(4, "v1")
    te = train.make_text_encoder(tokenizer)
    scenes = [sample_scene(random.Random(s), n_objects=2) for s in range(4)]
    z = torch.randn(4, 4, 16, 16)
    t = torch.full((4,), 300)
    params = list(unet.parameters()) + list(te.parameters())
    opt = torch.optim.Adam(params, lr=3e-3)
    rec = GroundingRecorder(GROUNDED_SITES)
    targets, grounded = grounding_targets(tokenizer, scenes, train.MAX_TOKENS, 64, (16, 8))

    def loss():
        rec.probs.clear()
        emb = train.encode_prompts(tokenizer, te, [s.caption() for s in scenes], "cpu")
        with controlled_attention(unet, rec, GROUNDED_SITES) as sites:
            unet(z, t, encoder_hidden_states=emb)
        assert len(rec.probs) == len(sites) == sum(1 for s in sites if s.kind == "cross")
        return torch.stack([token_grounding_loss(p, targets[int(p.shape[2] ** 0.5)], grounded) for p in rec.probs]).mean()

    first = loss().item()
    for _ in range(25):
        opt.zero_grad()
        loss().backward()
        opt.step()
    assert loss().item() < 0.5 * first
    assert all(type(p).__name__ != "ControlledAttnProcessor" for p in unet.attn_processors.values())  # restored


def test_t2i_training_with_ground_logs_the_term(tmp_path):
    base = ["--steps", "2", "--batch", "2", "--log-every", "1", "--device", "cpu", "--save-every", "0"]
    train.main(["vae", "--out", str(tmp_path / "vae")] + base)
    train.main(["t2i", "--out", str(tmp_path / "t2i"), "--vae", str(tmp_path / "vae"), "--ground", "0.5", "--drop", "0"]
               + base)
    log = [json.loads(l) for l in (tmp_path / "t2i" / "log.jsonl").read_text().splitlines()]
    assert all("ground" in r for r in log)
    # the added term is in the loss: plain MSE alone would be smaller (min-SNR off here)
    assert all(r["loss"] == pytest.approx(r["mse"] + 0.5 * r["ground"], rel=1e-4) for r in log)
    train.main(["instruct", "--out", str(tmp_path / "ip2p"), "--vae", str(tmp_path / "vae"), "--ground", "0.5",
                "--drop", "0"] + base)
    log = [json.loads(l) for l in (tmp_path / "ip2p" / "log.jsonl").read_text().splitlines()]
    assert all(r["ground"] > 0 and r["loss"] == pytest.approx(r["mse"] + 0.5 * r["ground"], rel=1e-4) for r in log)
