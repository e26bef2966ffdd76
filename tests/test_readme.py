"""The README's Python example runs as written (from the repository root, with the bundled model); the
README's and the docs' command lines parse."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from PIL import Image

from locedit.diffusion.loading import BUNDLED_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (BUNDLED_DIR / "shapes").is_dir(), reason="the bundled shapes model is not installed")
def test_readme_python_example_runs(monkeypatch, tmp_path):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no Python example"
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    monkeypatch.chdir(tmp_path)  # as written, in a copy: the block writes green.png
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    result, again, inverted = scope["result"], scope["again"], scope["inverted"]
    assert result.images[0].size == scope["image"].size == (64, 64)
    meta = Image.open(tmp_path / "green.png").text
    assert meta["locedit:method"] == "p2p" and meta["locedit:inversion"] == "direct"
    assert json.loads(meta["locedit:guidance"]) == 7.5 and json.loads(meta["locedit:steps"]) == 20
    assert result.stats["unet_calls"] == inverted.stats["unet_calls"] + result.stats["edit_unet_calls"]
    assert again.trajectory is inverted  # the second edit ran no inversion of its own
    exec(compile(blocks[1], "README.md", "exec"), scope)  # the edit as data, in the first block's scope
    assert scope["done"].edited.shape == (1, 3, 64, 64) and scope["spec"].command().startswith("locedit edit ")
    assert scope["done"].image.size == (64, 64)
    assert os.getcwd() == str(tmp_path)


def test_every_command_line_in_the_docs_parses():
    """Each ``locedit ...`` line of a ``sh`` block in the README and docs/*.md (continuations joined,
    ``&&`` chains split, comments cut; lines with a ``...`` placeholder left out) is accepted by the
    command line's parser: a renamed or removed flag breaks the docs' examples here first."""
    import contextlib
    import io
    import shlex

    from locedit.cli import build_parser

    parser, root, failed, seen = build_parser(), Path(__file__).resolve().parents[1], [], 0
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for block in re.findall(r"```sh\n(.*?)```", doc.read_text(), re.S):
            for line in block.replace("\\\n", " ").splitlines():
                for cmd in line.split("&&"):
                    cmd = cmd.split(" #")[0].strip()
                    if not cmd.startswith("locedit ") or " ... " in f"{cmd} ":
                        continue
                    seen += 1
                    err = io.StringIO()
                    try:
                        with contextlib.redirect_stderr(err):
                            parser.parse_args(shlex.split(cmd)[1:])
                    except SystemExit:
                        failed.append(f"{doc.name}: {cmd[:80]}: {err.getvalue().strip().splitlines()[-1]}")
    assert seen > 40 and not failed, failed
