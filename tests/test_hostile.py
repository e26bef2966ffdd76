"""Issue 32: inputs on the newer surfaces (model folders, saved inversions, bench datasets, the world
command, outputs) each end with exit 2, one ``error:`` line, no traceback, nothing written, and no
model call. docs/errors.md lists each refusal."""

import json
import os
import shutil
import stat

import pytest
import torch
from test_hardening import BENCH, EDIT, FAST, refused

from locedit.diffusion import save_model
from locedit.diffusion.tiny import tiny_bundle

SRC = "a red circle and a blue striped square on a gray background"
TGT = "a green circle and a blue striped square on a gray background"


# ---- model folders ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    return save_model(tiny_bundle(seed=0), tmp_path_factory.mktemp("tiny") / "m")


def _copy(model_folder, tmp_path):
    return shutil.copytree(model_folder, tmp_path / "m")


def _json(path, change):
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _edit(folder, scene_png, tmp_path):
    return ["edit", scene_png[0], *EDIT, "--steps", "2", "--quiet", "--inversion", "ddim", "--model", str(folder),
            "--out", str(tmp_path / "o.png")]


def test_a_truncated_model_index_is_refused(model_folder, scene_png, tmp_path, capsys):
    m = _copy(model_folder, tmp_path)
    (m / "model_index.json").write_text((m / "model_index.json").read_text()[:40])
    refused(_edit(m, scene_png, tmp_path), capsys, "model_index.json is not readable JSON", tmp_path / "o.png")


def test_a_class_outside_the_family_is_refused_by_file_and_class(model_folder, scene_png, tmp_path, capsys):
    m = _copy(model_folder, tmp_path)
    _json(m / "model_index.json", lambda d: d.update(feature_extractor=["os", "system"]))
    refused(_edit(m, scene_png, tmp_path), capsys, "model_index.json entry 'feature_extractor' names os.system")
    _json(m / "model_index.json", lambda d: d.pop("feature_extractor"))
    _json(m / "model_index.json", lambda d: d.update(unet=["diffusers", "ControlNetModel"]))
    refused(_edit(m, scene_png, tmp_path), capsys, "gives unet the class diffusers.ControlNetModel")
    _json(m / "model_index.json", lambda d: d.update(unet=["diffusers", "UNet2DConditionModel"]))
    _json(m / "unet" / "config.json", lambda d: d.update(_class_name="ControlNetModel"))
    refused(_edit(m, scene_png, tmp_path), capsys, "unet/config.json names the class 'ControlNetModel'",
            tmp_path / "o.png")


def test_a_folder_with_a_custom_pipeline_is_refused(model_folder, scene_png, tmp_path, capsys):
    m = _copy(model_folder, tmp_path)
    (m / "pipeline.py").write_text("import os\nos.system('touch /tmp/pwned')\n")
    refused(_edit(m, scene_png, tmp_path), capsys, "carries Python code (pipeline.py)")
    (m / "pipeline.py").unlink()
    _json(m / "model_index.json", lambda d: d.update(_class_name=["pipeline", "MyPipeline"]))
    refused(_edit(m, scene_png, tmp_path), capsys, "names the pipeline ['pipeline', 'MyPipeline']")


def test_weights_of_the_wrong_shape_name_the_tensor_and_both_shapes(model_folder, scene_png, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    m = _copy(model_folder, tmp_path)
    f = next((m / "unet").glob("*.safetensors"))
    weights = load_file(str(f))
    want = tuple(weights["conv_in.weight"].shape)
    weights["conv_in.weight"] = torch.zeros(want[0] + 1, *want[1:])
    save_file(weights, str(f))
    shape = lambda s: ", ".join(map(str, s))  # noqa: E731
    refused(_edit(m, scene_png, tmp_path), capsys,
            f"weight 'conv_in.weight' of its UNet2DConditionModel is ({shape((want[0] + 1,) + want[1:])}) in the "
            f"file but ({shape(want)})", tmp_path / "o.png")


# ---- saved inversions ---------------------------------------------------------------------------------------
@pytest.fixture
def saved(scene_png, tmp_path, capsys):
    from locedit.cli import main

    assert main(["invert", scene_png[0], "--source", "a red square", "--inversion", "ddim", "--out-dir",
                 str(tmp_path / "inv"), *FAST]) == 0
    return tmp_path / "inv"


def _from(saved, tmp_path, *extra):
    return ["edit", "--from-inversion", str(saved), "--target", "a blue square", "--quiet", "--out",
            str(tmp_path / "o.png"), *extra]


def test_a_saved_inversion_with_an_unknown_method_or_bad_size_is_refused(saved, tmp_path, capsys):
    _json(saved / "manifest.json", lambda d: d.update(method="foo"))
    refused(_from(saved, tmp_path), capsys, "names an unknown inversion 'foo'", tmp_path / "o.png")
    _json(saved / "manifest.json", lambda d: (d.update(method="ddim"), d["image"].update(width="wide")))
    refused(_from(saved, tmp_path), capsys, "image width 'wide' in manifest.json is not a size in pixels",
            tmp_path / "o.png")


def test_steps_other_than_the_saved_inversions_are_refused(saved, tmp_path, capsys):
    refused(_from(saved, tmp_path, "--steps", "4"), capsys, "was inverted with 2 steps", tmp_path / "o.png")


# ---- bench datasets -----------------------------------------------------------------------------------------
def _jsonl(tmp_path, scene_png, *rows):
    shutil.copy(scene_png[0], tmp_path / "img.png")
    spec = tmp_path / "edits.jsonl"
    spec.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return spec


GOOD = {"image": "img.png", "source_prompt": "a red square", "target_prompt": "a blue square"}


@pytest.mark.parametrize("rows,needle", [
    ((), "no edit in it"),
    (({"image": "img.png", "source_prompt": "a red square"},), "edits.jsonl:1: no 'target_prompt'"),
    (({**GOOD, "id": "a"}, {**GOOD, "id": "a"}), "edits.jsonl:2: id 'a' is also line 1's"),
    (({**GOOD, "image": "../../../../etc/hostname"},), "names a file outside"),
    (({**GOOD, "image": "/etc/hostname"},), "names a file outside"),
])
def test_bad_jsonl_datasets_are_refused_before_anything_is_written(tmp_path, scene_png, capsys, rows, needle):
    spec = _jsonl(tmp_path, scene_png, *rows)
    refused(BENCH + ["--dataset", f"jsonl:{spec}", "--methods", "p2p", "--out", str(tmp_path / "b")], capsys,
            needle, tmp_path / "b")


def test_any_path_lets_a_dataset_name_files_elsewhere(tmp_path, scene_png):
    from locedit.bench import open_dataset

    folder = tmp_path / "d"
    folder.mkdir()
    spec = _jsonl(folder, scene_png, {**GOOD, "image": os.path.abspath(scene_png[0])})
    assert [it.id for it in open_dataset(f"jsonl:{spec}", any_path=True)] == ["0"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_bench_folder_is_refused_before_the_model_loads(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(stat.S_IRUSR | stat.S_IXUSR)
    try:
        refused(BENCH + ["--dataset", "shapes:n=1", "--methods", "p2p", "--out", str(ro / "b")], capsys,
                "is not writable", ro / "b")
    finally:
        ro.chmod(stat.S_IRWXU)


# ---- world and outputs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,needle", [
    (["sample", "--kinds", "colour"], "--kinds applies to 'world edits'"),
    (["sample", "--seed", "-1"], "argument --seed: -1 is not in [0, 2**32)"),
    (["edits", "--size", "100000"], "--size 100000: the side must be 8 to"),
])
def test_world_checks_its_flags_before_writing(tmp_path, capsys, argv, needle):
    refused(["world", *argv, "--out-dir", str(tmp_path / "w")], capsys, needle, tmp_path / "w")


def test_out_in_a_dangling_link_and_a_short_box_are_refused_before_the_run(scene_png, tmp_path, capsys):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    refused(["edit", scene_png[0], *EDIT, *FAST, "--out", str(tmp_path / "link" / "o.png")], capsys,
            "is a broken symbolic link", tmp_path / "nowhere")
    refused(["edit", scene_png[0], *EDIT, *FAST, "--method", "mag-edit", "--region", "blue=10,10,5", "--out",
             str(tmp_path / "o.png")], capsys, "box '10,10,5' is not four numbers x0,y0,x1,y1", tmp_path / "o.png")


def test_a_dataset_row_naming_a_file_that_is_not_an_image_is_refused_before_run_json(tmp_path, scene_png, capsys):
    (tmp_path / "notes.png").write_text("not an image")
    spec = _jsonl(tmp_path, scene_png, GOOD, {**GOOD, "id": "b", "image": "notes.png"})
    refused(BENCH + ["--dataset", f"jsonl:{spec}", "--methods", "p2p", "--out", str(tmp_path / "b")], capsys,
            "edits.jsonl:2: image", tmp_path / "b")
