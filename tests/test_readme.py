"""The README's Python example runs as written (from the repository root, with the bundled model)."""

import os
import re
from pathlib import Path

import pytest

from locedit.diffusion.loading import BUNDLED_DIR

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not (BUNDLED_DIR / "shapes").is_dir(), reason="the bundled shapes model is not installed")
def test_readme_python_example_runs(monkeypatch):
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(ROOT)
    scope: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), scope)
    edited = scope["result"].edited
    assert edited.shape == (1, 3, 64, 64)
    exec(compile(blocks[1], "README.md", "exec"), scope)  # the edit as data, in the first block's scope
    assert scope["done"].edited.shape == (1, 3, 64, 64) and scope["spec"].command().startswith("locedit edit ")
    assert scope["done"].image.size == (64, 64)
    assert os.getcwd() == str(ROOT)
