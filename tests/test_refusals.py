"""Issue 31, item 2: a bad command line is refused before the model loads. Every case of
``bench/refusals.py`` (the rows of docs/errors.md that the command line and its files can show) runs
as a fresh ``locedit`` process with a trap on the model loader: exit 2, one ``error:`` line, the
model never loaded; and where the fault is in the arguments, the files or the prompts (the edit and
instruct commands), torch is not even imported. Times are the benchmark's, not asserted here."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import refusals  # noqa: E402

# these read a saved trajectory's tensors, or set up the bench's and invert's machinery, before the fault shows
TORCH_BEFORE_REFUSAL = {"--from-inversion of a folder without one", "invert --out-dir is a file",
                        "bench: bad ShapesEdit option", "bench: unknown ShapesEdit kind", "bench: unknown method"}


@pytest.fixture(scope="module")
def outcomes():
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        files = refusals._inputs(Path(tmp))
        return {what: refusals.run_case(argv, env) for what, argv in refusals.cases(files)}


def test_every_case_is_refused_without_loading_the_model(outcomes):
    assert len(outcomes) >= 48
    for what, (_, code, loaded, _, line) in outcomes.items():
        assert code == 2 and line.startswith("error: "), (what, code, line)
        assert not loaded, f"{what}: the model was loaded before the refusal"


def test_edit_and_instruct_refusals_do_not_import_torch(outcomes):
    for what, (_, _, _, torch_imported, line) in outcomes.items():
        if what not in TORCH_BEFORE_REFUSAL:
            assert not torch_imported, f"{what}: torch was imported before the refusal ({line})"


def test_the_trap_sees_a_model_load(tmp_path):
    """The trap itself: a good command line loads the model, and the trap says so."""
    files = refusals._inputs(tmp_path)
    argv = ["edit", files["img"], "--source", refusals.SRC, "--target", refusals.TGT, "--steps", "1",
            "--inversion", "ddim", "--out", str(tmp_path / "o.png")]
    _, code, loaded, torch_imported, line = refusals.run_case(argv, {**os.environ, "HF_HUB_OFFLINE": "1"})
    assert code == 0 and loaded and torch_imported, line
