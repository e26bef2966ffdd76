import importlib.util
import pytest

tomllib = pytest.importorskip("tomllib")
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_torchvision_is_not_installed_nor_required():
    assert importlib.util.find_spec("torchvision") is None
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    listed = deps["dependencies"] + sum(deps.get("optional-dependencies", {}).values(), [])
    assert not any(d.lower().startswith("torchvision") for d in listed)


def test_torch_requirement_cannot_pull_a_newer_cuda_build():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = next(d for d in deps if d.startswith("torch"))
    assert "<=" in torch_req or "==" in torch_req
