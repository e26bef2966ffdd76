import random

import numpy as np
import pytest

from locedit.world.edits import EDIT_KINDS, edit_from_seed, make_edit
from locedit.world.oracle import read_scene
from locedit.world.scene import BACKGROUNDS, COLOURS, SHAPES, Scene, full_masks, render, scene_from_seed


def test_render_is_deterministic_per_seed():
    a, ma = render(scene_from_seed(7), 64)
    b, mb = render(scene_from_seed(7), 64)
    assert np.array_equal(a, b) and all(np.array_equal(x, y) for x, y in zip(ma, mb))
    assert not np.array_equal(a, render(scene_from_seed(8), 64)[0])


def test_world_has_the_promised_variety():
    scenes = [scene_from_seed(s) for s in range(400)]
    objs = [o for s in scenes for o in s.objects]
    assert {o.colour for o in objs} == set(COLOURS) and len(COLOURS) >= 6
    assert {o.shape for o in objs} == set(SHAPES) and len(SHAPES) == 4
    assert {o.texture for o in objs} == {"plain", "striped"}
    assert {s.background for s in scenes} == set(BACKGROUNDS) and len(BACKGROUNDS) == 3
    assert {len(s.objects) for s in scenes} == {1, 2, 3}
    overlapping = [s for s in scenes if any((a & b).any() for i, a in enumerate(full_masks(s, 64))
                                            for b in full_masks(s, 64)[i + 1:])]
    assert 0 < len(overlapping) < len(scenes)


@pytest.mark.parametrize("size", [32, 64, 96])
def test_masks_match_the_render_exactly(size):
    for seed in range(30):
        scene = scene_from_seed(seed)
        img, masks = render(scene, size)
        owned = np.any(masks, axis=0)
        bg = np.array(BACKGROUNDS[scene.background], np.uint8)
        assert np.all(img[~owned] == bg)
        for obj, m in zip(scene.objects, masks):
            assert not np.any(np.all(img[m] == bg, axis=-1))
            colour = np.array(COLOURS[obj.colour], np.uint8)
            share = np.all(img[m] == colour, axis=-1).mean()
            assert share == 1.0 if obj.texture == "plain" else 0.2 < share < 0.9


def test_caption_names_every_object_left_to_right():
    scene = scene_from_seed(3)
    cap = scene.caption()
    positions = [cap.index(o.phrase()) for o in scene.ordered()]
    assert positions == sorted(positions) and cap.endswith(f"{scene.background} background")


@pytest.mark.parametrize("size", [64, 128])
def test_oracle_reads_renders_back(size):
    seeds = range(200)
    ok = sum(read_scene(render(scene_from_seed(s), size)[0]).matches(scene_from_seed(s)) for s in seeds)
    assert ok / len(seeds) >= 0.98


def test_oracle_notices_a_wrong_scene():
    scene = scene_from_seed(11)
    other = make_edit(random.Random(0), scene, "shape").target
    assert not read_scene(render(scene, 64)[0]).matches(other)


@pytest.mark.parametrize("kind", EDIT_KINDS)
def test_edits_carry_exact_ground_truth(kind):
    for seed in range(20):
        e = edit_from_seed(seed, kind)
        assert e.kind == kind and e.source_caption != e.target_caption and e.instruction
        src, tgt = e.render_source(64), e.render_target(64)
        changed = np.any(src != tgt, axis=-1)
        assert changed.any()
        assert not np.any(changed & ~e.mask(64)), "a pixel outside the edit mask changed"
        assert read_scene(tgt).matches(e.target) or read_scene(tgt).matches(e.target, texture=False)
        if kind != "background":
            assert len(e.boxes(64)) == len(e.edited) == (2 if kind == "two" else 1)


def test_world_tokenizer_spells_every_word_as_one_token_and_survives_saving(tmp_path):
    from transformers import CLIPTokenizer

    from locedit.diffusion.tiny import TINY_WORDS, word_tokenizer
    from locedit.world.scene import VOCABULARY
    from locedit.world.train import make_tokenizer

    tok = make_tokenizer()
    assert tok.get_vocab() == make_tokenizer().get_vocab()  # built the same way every time
    assert all(len(tok(w, add_special_tokens=False).input_ids) == 1 for w in VOCABULARY)
    tiny = word_tokenizer(TINY_WORDS)
    assert all(len(tiny(w, add_special_tokens=False).input_ids) == 1 for w in TINY_WORDS)
    longest = "a purple striped triangle, a yellow striped diamond and an orange striped square on a white background"
    assert len(tok(longest).input_ids) <= tok.model_max_length  # the longest captions fit, untruncated
    tok.save_pretrained(tmp_path)
    back = CLIPTokenizer.from_pretrained(tmp_path)
    assert back(longest).input_ids == tok(longest).input_ids
    assert back("zebra").input_ids == tok("zebra").input_ids  # unknown words still tokenize, by bytes
