import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_png
from locedit.cli import main

FAST = ["--steps", "4", "--quiet"]


def run(argv, capsys):
    capsys.readouterr()  # drop whatever the fixtures printed
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def assert_bad(argv, capsys, out_path, needle):
    code, out, err = run(argv + ["--out", str(out_path)], capsys)
    assert code == 2, err
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    assert needle in lines[0], lines[0]
    assert "Traceback" not in err
    assert not out_path.exists()


def test_edit_writes_png_at_input_size_with_metadata(scene_png, tmp_path, capsys):
    img, mask = scene_png
    out = tmp_path / "o.png"
    code, stdout, err = run(["edit", img, "--source", "a red square", "--target", "a blue square",
                             "--inversion", "ddim", "--mask", mask, "--out", str(out), "--json"] + FAST, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["unet_calls"] == 8 and summary["out"] == str(out)
    with Image.open(out) as im:
        assert im.size == (80, 48)
        assert im.text["locedit:target"] == "a blue square"
        assert json.loads(im.text["locedit:options"])["p2p"]["mode"] == "refine"
        assert im.text["locedit:inversion"] == "ddim" and "locedit:blend_words" not in im.text
        assert "locedit:preset" not in im.text  # unset: no chunk (was the text "null")


def test_invert_then_edit_from_inversion_equals_direct_edit(scene_png, tmp_path, capsys):
    img, _ = scene_png
    common = ["--target", "a blue square", "--blend-words", "square", "square"] + FAST
    direct = tmp_path / "direct.png"
    code, _, err = run(["edit", img, "--source", "a red square", "--inversion", "spd", "--spd-steps", "2",
                        "--out", str(direct)] + common, capsys)
    assert code == 0, err
    inv = tmp_path / "inv"
    code, _, err = run(["invert", img, "--prompt", "a red square", "--inversion", "spd", "--spd-steps", "2",
                        "--out", str(inv), "--steps", "4", "--quiet"], capsys)
    assert code == 0, err
    assert (inv / "trajectory.safetensors").exists() and json.loads((inv / "manifest.json").read_text())["method"] == "spd"
    reused = tmp_path / "reused.png"
    code, _, err = run(["edit", "--from-inversion", str(inv), "--out", str(reused)] + common, capsys)
    assert code == 0, err
    a, b = np.asarray(Image.open(direct)), np.asarray(Image.open(reused))
    assert a.shape == (48, 80, 3) and np.array_equal(a, b)


def test_missing_image(tmp_path, capsys):
    assert_bad(["edit", str(tmp_path / "nope.png"), "--source", "a", "--target", "b"] + FAST, capsys,
               tmp_path / "o.png", "does not exist")


def test_unreadable_image(tmp_path, capsys):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    assert_bad(["edit", str(bad), "--source", "a", "--target", "b"] + FAST, capsys, tmp_path / "o.png", "cannot be read")


def test_mask_of_other_size(scene_png, tmp_path, capsys):
    img, _ = scene_png
    small = write_png(tmp_path / "small.png", np.full((10, 10), 255, np.uint8))
    assert_bad(["edit", img, "--source", "a red square", "--target", "a blue square", "--mask", small] + FAST,
               capsys, tmp_path / "o.png", "10x10")


def test_empty_mask(scene_png, tmp_path, capsys):
    img, _ = scene_png
    empty = write_png(tmp_path / "empty.png", np.zeros((48, 80), np.uint8))
    assert_bad(["edit", img, "--source", "a red square", "--target", "a blue square", "--mask", empty] + FAST,
               capsys, tmp_path / "o.png", "empty")


def test_prompt_over_the_token_limit(scene_png, tmp_path, capsys):
    img, _ = scene_png
    long = " ".join(["red"] * 40)  # the tiny tokenizer holds 30 tokens
    assert_bad(["edit", img, "--source", "a red square", "--target", long] + FAST, capsys, tmp_path / "o.png",
               "over this model's limit")


def test_word_swap_with_different_token_counts(scene_png, tmp_path, capsys):
    img, _ = scene_png
    assert_bad(["edit", img, "--source", "a red square", "--target", "a red striped square", "--p2p", "replace"] + FAST,
               capsys, tmp_path / "o.png", "--p2p refine")


def test_blend_words_not_in_prompts(scene_png, tmp_path, capsys):
    img, _ = scene_png
    assert_bad(["edit", img, "--source", "a red square", "--target", "a blue square",
                "--blend-words", "circle", "square"] + FAST, capsys, tmp_path / "o.png", "circle")


def test_unknown_model_path(scene_png, tmp_path, capsys):
    img, _ = scene_png
    assert_bad(["edit", img, "--source", "a", "--target", "b", "--model", str(tmp_path / "missing")] + FAST,
               capsys, tmp_path / "o.png", "missing")


def test_pickle_weights(scene_png, model_dir, tmp_path, capsys):
    img, _ = scene_png
    folder = tmp_path / "pickled"
    shutil.copytree(model_dir, folder)
    for f in (folder / "text_encoder").glob("*.safetensors"):
        f.unlink()
    torch.save({}, folder / "text_encoder" / "pytorch_model.bin")
    assert_bad(["edit", img, "--source", "a", "--target", "b", "--model", str(folder)] + FAST,
               capsys, tmp_path / "o.png", "pickle")


def test_nan_during_optimisation(scene_png, model_dir, tmp_path, capsys):
    from locedit.diffusion import load_model, save_model

    img, _ = scene_png
    broken = load_model(str(model_dir))
    with torch.no_grad():
        broken.unet.conv_out.bias.fill_(float("nan"))
    folder = save_model(broken, tmp_path / "nan-model")
    assert_bad(["edit", img, "--source", "a red square", "--target", "a blue square", "--model", str(folder),
                "--inversion", "null-text"] + FAST, capsys, tmp_path / "o.png", "step 0")


def test_unknown_option_value_is_one_line(tmp_path, capsys):
    assert_bad(["edit", "x.png", "--source", "a", "--target", "b", "--inversion", "magic"], capsys,
               tmp_path / "o.png", "magic")


def test_help_explains_commands():
    out = subprocess.run([sys.executable, "-m", "locedit", "edit", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    for flag in ("--inversion", "--p2p", "--blend-words", "--mask", "--from-inversion", "--proximal", "--preset",
                 "--mag-loss", "--ccl-form", "example"):
        assert flag in out.stdout


# ---- localised methods ----------------------------------------------------------------------------
MAG = ["--source", "a red square", "--target", "a blue square", "--method", "mag-edit", "--inversion", "ddim",
       "--guided-steps", "1", "--iterations", "1"]


def test_mag_edit_from_the_cli_with_box_region_and_attention_grid(scene_png, tmp_path, capsys):
    img, mask = scene_png
    out, att = tmp_path / "o.png", tmp_path / "att.png"
    code, stdout, err = run(["edit", img] + MAG + ["--region", f"blue={mask}", "--save-attention", str(att),
                                                   "--out", str(out), "--json"] + FAST, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["method"] == "mag-edit" and summary["guidance_loss_first_last"]
    with Image.open(att) as im:
        assert im.size == (64, 64)  # one word, one tile at the model's size
    code, _, err = run(["edit", img, "--source", "a red square", "--target", "a blue square", "--method", "mde-edit",
                        "--inversion", "ddim", "--guided-steps", "1", "--iterations", "1",
                        "--region", "square=20,10,45,30", "--attribute", "blue=20,10,45,30",
                        "--out", str(tmp_path / "mde.png")] + FAST, capsys)
    assert code == 0, err


def test_spec_file_carries_the_options(scene_png, tmp_path, capsys):
    img, mask = scene_png
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"image": img, "source": "a red square", "target": "a blue square",
                                "method": "mag-edit", "region": [f"blue={mask}"], "inversion": "ddim",
                                "guided-steps": 1, "iterations": 1, "steps": 3, "quiet": True}))
    out = tmp_path / "o.png"
    code, _, err = run(["edit", "--spec", str(spec), "--out", str(out)], capsys)
    assert code == 0, err
    with Image.open(out) as im:
        assert im.text["locedit:method"] == "mag-edit"


def test_region_word_not_in_target(scene_png, tmp_path, capsys):
    img, mask = scene_png
    assert_bad(["edit", img] + MAG + ["--region", f"dog={mask}"] + FAST, capsys, tmp_path / "o.png", "'dog'")


def test_region_mask_of_wrong_size(scene_png, tmp_path, capsys):
    img, _ = scene_png
    small = write_png(tmp_path / "small.png", np.full((10, 10), 255, np.uint8))
    assert_bad(["edit", img] + MAG + ["--region", f"blue={small}"] + FAST, capsys, tmp_path / "o.png", "10x10")


def test_region_mask_empty(scene_png, tmp_path, capsys):
    img, _ = scene_png
    empty = write_png(tmp_path / "empty.png", np.zeros((48, 80), np.uint8))
    assert_bad(["edit", img] + MAG + ["--region", f"blue={empty}"] + FAST, capsys, tmp_path / "o.png", "empty")


def test_a_region_word_given_twice_is_refused(scene_png, tmp_path, capsys):
    img, mask = scene_png
    regions = sum((["--region", f"blue={mask}"] for _ in range(4)), [])
    assert_bad(["edit", img] + MAG + regions + FAST, capsys, tmp_path / "o.png", "twice")


def test_mag_edit_needs_a_region(scene_png, tmp_path, capsys):
    img, _ = scene_png
    assert_bad(["edit", img] + MAG + FAST, capsys, tmp_path / "o.png", "--region")


def test_locinv_from_the_cli(scene_png, tmp_path, capsys):
    img, mask = scene_png
    out = tmp_path / "o.png"
    code, stdout, err = run(["edit", img, "--source", "a red square", "--target", "a blue square", "--method", "locinv",
                             "--region", f"square={mask}", "--bind", "red:square", "--locinv-inner", "1",
                             "--nti-steps", "1", "--out", str(out), "--json"] + FAST, capsys)
    assert code == 0, err
    summary = json.loads(stdout)
    assert summary["method"] == "locinv" and "inversion" not in summary  # locinv inverts by itself
    assert_bad(["edit", img, "--source", "a red square", "--target", "a blue square", "--method", "locinv",
                "--region", f"square={mask}", "--bind", "redsquare"] + FAST, capsys, tmp_path / "bad.png", "ADJ:NOUN")


def test_the_default_shapes_model_refuses_words_it_does_not_know_before_loading(scene_png, tmp_path, capsys,
                                                                               monkeypatch):
    """Issue 31: on the built-in shapes models a prompt outside the shapes world's words is refused in one
    line that names the words, lists the known ones and points to --model, before any model is built."""
    import locedit.api
    import locedit.diffusion

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(locedit.diffusion, "load_model", no_load)
    monkeypatch.setattr(locedit.api, "load_spec_model", no_load)
    out = tmp_path / "o.png"
    code, _, err = run(["edit", scene_png[0], "--source", "a cat sitting on the grass", "--target",
                        "a dog sitting on the grass", "--blend-words", "cat", "dog", "--out", str(out)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and not out.exists()
    assert "'cat', 'sitting', 'grass', 'dog'" in lines[0] and "circle" in lines[0] and "--model" in lines[0]
    code, _, err = run(["instruct", scene_png[0], "--instruction", "make the cat green", "--out", str(out)], capsys)
    assert code == 2 and "'cat'" in err and "shapes-instruct" in err and not out.exists()


def test_invert_on_the_shapes_model_refuses_unknown_words_too(scene_png, tmp_path, capsys):
    code, _, err = run(["invert", scene_png[0], "--source", "a cat on the grass", "--out-dir", str(tmp_path / "inv")],
                       capsys)
    assert code == 2 and "'cat'" in err and "--model" in err and not (tmp_path / "inv").exists()


def test_grad_checkpointing_where_nothing_takes_gradients_is_refused_before_loading(scene_png, tmp_path, capsys,
                                                                                      monkeypatch):
    import locedit.api

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(locedit.api, "load_spec_model", no_load)
    out = tmp_path / "o.png"
    code, _, err = run(["edit", scene_png[0], "--source", "a red square", "--target", "a blue square",
                        "--inversion", "ddim", "--grad-checkpointing", "--out", str(out)], capsys)
    assert code == 2 and not out.exists()
    assert err.strip() == ("error: --grad-checkpointing has no effect here: neither --method p2p nor --inversion ddim "
                           "takes gradients through the UNet")
    # null-text inversion takes gradients: accepted, so the run goes on to load the model (the trap)
    code, _, err = run(["edit", scene_png[0], "--source", "a red square", "--target", "a blue square",
                        "--inversion", "null-text", "--grad-checkpointing", "--out", str(out)], capsys)
    assert code == 1 and "the model was loaded" in err
