"""The edit as data (issue 30): the command line parses into an EditSpec, the spec prints the
``locedit edit`` line that parses back to it, the library runs it, and the PNG records that line."""

import json
import shlex

import numpy as np
import pytest
import torch
from conftest import SRC, TGT
from PIL import Image

from locedit import api
from locedit.cli import build_parser
from locedit.cli.edit import parse_edit
from locedit.guidance import GuidanceOptions
from locedit.inversion import SPDOptions
from locedit.methods import MAGEditOptions
from locedit.errors import LoceditError
from locedit.spec import EditSpec


def parse(argv):
    return parse_edit(build_parser().parse_args(["edit", *argv]))


SPECS = [
    EditSpec(TGT, image="in.png", source=SRC),
    EditSpec(TGT, image="in.png", source=SRC, method="mag-edit", inversion="spd", preset="official",
             options=MAGEditOptions(guidance=GuidanceOptions(iterations=3, step_size=1.5, sigma_scaling=False)),
             inversion_options=SPDOptions(max_steps=4, lr=0.01), regions=("blue=m.png", "square=1,2,30,40"),
             steps=7, guidance=5.0, seed=3, fit="resize", dtype="bf16", model="tiny-random", attention_words=()),
    EditSpec(TGT, image="a b.png", source=SRC, method="p2p", masks=("m1.png", "m2.png"), boxes=("0,0,9,9",),
             blend_words=None, npi_null=True, proximal=0.6, inversion_guidance=300, attention_words=("blue",),
             max_pixels=1000, max_bytes=2**20),
    EditSpec(TGT, from_inversion="inv dir", method="masactrl", blend_words=None, grad_checkpointing=False),
    EditSpec(TGT, image="in.png", source=SRC, method="p2p", blend_words=("square", "square")),
]


@pytest.mark.parametrize("spec", SPECS, ids=range(len(SPECS)))
def test_a_specs_command_line_parses_back_to_it(spec):
    from locedit.options import preset
    from locedit.methods import METHODS

    argv = spec.argv()
    again = parse(argv)
    # parsing fills in the options objects the spec left to its preset
    want = spec.replace(options=spec.options or preset(METHODS[spec.method].Options, spec.preset))
    if want.inversion_options is None and METHODS[spec.method].takes_inversion(want.options) and not spec.from_inversion:
        from locedit.inversion import INVERSIONS

        want = want.replace(inversion_options=preset(INVERSIONS[spec.inversion or "null-text"].Options, spec.preset))
    assert again == want, spec.command()


def test_reweight_pairs_and_booleans_round_trip():
    from locedit.control import P2POptions
    from locedit.methods import P2PEditOptions

    opts = P2PEditOptions(p2p=P2POptions(mode="reweight", reweight=(("blue", 2.0), ("square", 0.5))))
    spec = EditSpec(TGT, image="in.png", source=SRC, options=opts)
    assert "--reweight" in spec.argv() and parse(spec.argv()).options == opts


def test_the_library_runs_a_spec_as_the_command_line_does(model_dir, scene_png, tmp_path, capsys):
    from locedit.cli import main

    image, mask = scene_png
    spec = EditSpec(TGT, image=image, source=SRC, model=str(model_dir), steps=2, inversion="ddim", masks=(mask,))
    out = tmp_path / "cli.png"
    assert main(["edit", *spec.argv(), "--out", str(out), "--json", "--quiet"]) == 0
    summary = json.loads(capsys.readouterr().out)
    result = api.edit(spec)
    png = np.asarray(Image.open(out).convert("RGB"))
    lib = (result.edited[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
    assert result.edited.shape[-2:] == (48, 80) and np.array_equal(png, lib)
    assert summary["command"] == spec.command() == result.meta["command"]
    saved = result.save(tmp_path / "lib.png")  # the library writes what the command line writes
    assert np.array_equal(np.asarray(Image.open(saved).convert("RGB")), png)
    assert np.array_equal(np.asarray(result.image), png)
    assert Image.open(saved).text["locedit:command"] == Image.open(out).text["locedit:command"]
    recorded = Image.open(out).text["locedit:command"]
    assert parse(shlex.split(recorded)[2:]) == parse(spec.argv())  # the PNG's line reproduces the edit


def test_the_spec_is_checked_before_any_file_or_model():
    with pytest.raises(Exception, match="--target is empty"):
        api.edit(EditSpec(" ", image="/nonexistent.png", source=SRC))
    with pytest.raises(Exception, match="--blend-words is not used by --method mag-edit"):
        api.edit(EditSpec(TGT, image="/nonexistent.png", source=SRC, method="mag-edit", blend_words=("a", "b")))
    with pytest.raises(Exception, match="--inversion is not used by --method locinv"):
        api.edit(EditSpec(TGT, image="/nonexistent.png", source=SRC, method="locinv", inversion="ddim",
                          regions=("square=1,1,5,5",)))


def test_pipeline_takes_any_size_and_returns_the_input_size(bundle, scene_png, tmp_path):
    """Issue 31, item 5: a PIL image of any size in, the edit at that size out (PIL too), saved with
    its metadata; the mask at the image's size; a trajectory from invert reused in memory; guidance
    and steps as plain arguments; one naming (``inversion=``) in invert and edit."""
    from locedit import load_mask, pipeline
    from locedit.imaging import Fit

    image = Image.open(scene_png[0])  # 80x48
    mask = load_mask(scene_png[1])
    src, tgt = "a red square on the gray background", "a blue square on the gray background"
    traj = pipeline.invert(bundle, image, src, inversion="ddim", num_steps=3)
    calls = bundle.unet_calls
    res = pipeline.edit(bundle, image, src, tgt, trajectory=traj, mask=mask, guidance=3.0)
    assert bundle.unet_calls - calls == res.stats["edit_unet_calls"]  # no second inversion
    assert res.edited.shape == (1, 3, 48, 80) and res.images[0].size == (80, 48)
    assert res.stats["unet_calls"] == traj.stats["unet_calls"] + res.stats["edit_unet_calls"]
    # the same as editing the fitted image by hand and fitting back
    fit = Fit.plan(48, 80, bundle.image_size, "pad")
    x = pipeline.as_input(image)
    by_hand = pipeline.edit(bundle, fit.to_model(x), src, tgt, trajectory=traj,
                            mask=fit.to_model(mask, binary=True), guidance=3.0)
    assert torch.equal(fit.from_model(by_hand.edited), res.edited)
    other = pipeline.edit(bundle, image, src, tgt, trajectory=traj, mask=mask, guidance=7.5)
    assert not torch.equal(other.edited, res.edited)  # guidance= is used
    res.save(tmp_path / "out.png")
    text = Image.open(tmp_path / "out.png").text
    assert json.loads(text["locedit:guidance"]) == 3.0 and text["locedit:inversion"] == "ddim"
    assert json.loads(text["locedit:steps"]) == 3 and text["locedit:fit"] == "pad"
    with pytest.raises(LoceditError, match="mask is 64x64 but the image is 80x48"):
        pipeline.edit(bundle, image, src, tgt, trajectory=traj, mask=torch.ones(1, 1, 64, 64))
