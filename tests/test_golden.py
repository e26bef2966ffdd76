"""The engine's golden outputs (issue 30): every method x inversion and every instruct method, on the
bundled shapes models and tiny random SD 1.x / 2.x / SDXL models, two steps each, must give the
UNet call counts and the latents recorded before the redesign (``bench/golden.py`` records them;
``tests/golden/`` holds them). Equal means bitwise, except where :data:`TOLERANCE` names a case
whose operation order a change legitimately reordered, with the reason.

Bitwise holds on a machine whose CPU kernels are the recording's (``torch.backends.cpu.
get_cpu_capability()``, stored in ``tests/golden/machine.json`` by ``bench/golden.py``): GEMMs
vectorised for another instruction set (AVX-512 here) sum in another order. Elsewhere the latents must agree within
:data:`CROSS_MACHINE` of their largest magnitude (measured on an AVX-512 machine against the
recording, whose CPU was not stored, 2026-12-06: at most 2.6e-5 over the 236 cases, every call count equal), and the call
counts exactly."""

import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import golden  # noqa: E402

# case -> (max abs difference allowed in the latents, why); empty: every case is bitwise equal
TOLERANCE: dict[str, tuple[float, str]] = {}
CROSS_MACHINE = 1e-4  # relative to the case's largest |latent|, on another CPU than the recording's


def same_machine() -> bool:
    path = golden.GOLDEN / "machine.json"
    recorded = json.loads(path.read_text()).get("cpu_capability") if path.exists() else None
    return recorded == torch.backends.cpu.get_cpu_capability()


@pytest.fixture(scope="module")
def recorded():
    from safetensors.torch import load_file

    return json.loads((golden.GOLDEN / "engine.json").read_text()), load_file(str(golden.GOLDEN / "engine.safetensors"))


@pytest.fixture
def one_thread():
    """The recording ran on one thread: GEMM reductions may split differently on more."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _compare(recorded, facts, tensors, complete=True, exact=None):
    exact = same_machine() if exact is None else exact
    want_facts, want_tensors = recorded
    problems = []
    for key, fact in facts.items():
        if key not in want_facts:
            problems.append(f"{key}: not in the recording")
            continue
        want = want_facts[key]
        calls = {k: v for k, v in fact.items() if "calls" in k}
        if calls != {k: v for k, v in want.items() if "calls" in k}:
            problems.append(f"{key}: UNet calls {calls}, recorded {want}")
        tol, _ = TOLERANCE.get(key, (0.0, ""))
        got, ref = tensors[key], want_tensors[key]
        if not exact:
            tol = max(tol, CROSS_MACHINE * ref.abs().max().item())
        if got.shape != ref.shape:
            problems.append(f"{key}: latents of shape {tuple(got.shape)}, recorded {tuple(ref.shape)}")
        elif tol == 0.0 and not torch.equal(got, ref):
            problems.append(f"{key}: latents differ by {(got - ref).abs().max().item():.3g} (bitwise expected)")
        elif tol and (got - ref).abs().max().item() > tol:
            problems.append(f"{key}: latents differ by {(got - ref).abs().max().item():.3g} > {tol}")
        elif tol == 0.0 and "edited" in want and fact["edited"] != want["edited"]:
            problems.append(f"{key}: decoded image differs")
    if complete:  # every recorded case of this model was run
        prefix = next(iter(facts)).split("/")[0]
        problems += [f"{k}: recorded but not run" for k in want_facts if k.startswith(prefix + "/") and k not in facts]
    return problems


@pytest.mark.parametrize("model", golden.MODELS)
def test_every_method_and_inversion_gives_the_recorded_outputs(recorded, one_thread, model):
    facts, tensors = golden.record_model(model, progress=lambda *a: None)
    assert _compare(recorded, facts, tensors) == []


@pytest.mark.parametrize("model", golden.INSTRUCT_MODELS)
def test_every_instruct_method_gives_the_recorded_outputs(recorded, one_thread, model):
    facts, tensors = golden.record_instruct(model, progress=lambda *a: None)
    assert _compare(recorded, facts, tensors) == []


def test_the_recording_covers_every_registry_entry(recorded):
    from locedit.instruct.methods import INSTRUCT_METHODS
    from locedit.inversion import INVERSIONS
    from locedit.methods import METHODS

    keys = set(recorded[0])
    for model in golden.MODELS:
        assert {f"{model}/invert/{inv}" for inv in INVERSIONS} <= keys
        assert {k.split("/")[2] for k in keys if k.startswith(f"{model}/edit/")} == set(METHODS)
    for model in golden.INSTRUCT_MODELS:
        assert {f"{model}/instruct/{m}" for m in INSTRUCT_METHODS} <= keys


def test_a_changed_output_is_caught(recorded):
    """The comparison itself: a latent off by one ulp (on the recording's machine) or by twice the
    cross-machine tolerance (elsewhere), or one UNet call more, is reported."""
    facts, tensors = recorded
    key = next(k for k in facts if "/edit/" in k)
    for exact in (True, False):
        assert _compare(recorded, {key: facts[key]}, {key: tensors[key]}, complete=False, exact=exact) == []
        more = {**facts[key], "edit_unet_calls": facts[key]["edit_unet_calls"] + 1}
        assert _compare(recorded, {key: more}, {key: tensors[key]}, complete=False, exact=exact) != []
    ulp = tensors[key].clone()
    ulp.view(-1)[0] = torch.nextafter(ulp.view(-1)[0], torch.tensor(float("inf")))
    assert _compare(recorded, {key: facts[key]}, {key: ulp}, complete=False, exact=True) != []
    off = tensors[key].clone()
    off.view(-1)[0] += 2 * CROSS_MACHINE * off.abs().max()
    assert _compare(recorded, {key: facts[key]}, {key: off}, complete=False, exact=False) != []
