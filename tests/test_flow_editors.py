"""Issue 33, items 2, 4 and 6: the joint-attention control on diffusers' processor API, RF-Solver-Edit
and FireFlow's value sharing, KV-Edit, the flow editors' registry and ``locedit flow``, on tiny random
FLUX (and SD3, for the refusals) models. Equality with the authors' own code is
bench/peers/flux_run.py's (docs/peers.md); here each defining property is computed from its rule."""

import json
import math
import shlex

import numpy as np
import pytest
import torch
from flow_models import tiny_flux, tiny_sd3
from PIL import Image

from locedit.diffusion import flow
from locedit.diffusion.flow_model import from_flow_pipeline
from locedit.errors import LoceditError
from locedit.flow import FLOW_EDITORS, FireFlowEditOptions, KVEditOptions, RFSolverEditOptions
from locedit.flow.rfsolver_edit import rf_solver_edit
from locedit.flow.attention import JointControl, controlled
from locedit.flow.kvedit import KVCache, _inversion_mask, kv_edit

SRC, TGT = "a red circle on a gray background", "a green circle on a gray background"


@pytest.fixture(scope="module")
def flux():
    return from_flow_pipeline(tiny_flux(0, num_layers=1, num_single_layers=3), name="flux")


def _x(bundle, size=8, seed=1):
    torch.manual_seed(seed)
    return torch.randn(1, bundle.latent_channels, size, size)


def test_the_joint_processor_is_diffusers_own_and_is_restored(flux):
    """Installed with the pass-through control, every block's output is bitwise the model's own; the
    model's processors come back after the block, also when the call inside fails."""
    x, text = _x(flux), flux.encode_text([SRC])
    plain = flux.velocity(x, 0.6, text, 2.0)
    before = {k: type(v) for k, v in flux.transformer.attn_processors.items()}
    with controlled(flux.transformer, JointControl(text.states.shape[1])):
        assert torch.equal(flux.velocity(x, 0.6, text, 2.0), plain)
    with pytest.raises(RuntimeError):
        with controlled(flux.transformer, JointControl(text.states.shape[1])):
            raise RuntimeError("inside")
    assert {k: type(v) for k, v in flux.transformer.attn_processors.items()} == before


class _Values(JointControl):
    """The test's own recorder/injector of single-block values (not the editor's class)."""

    def __init__(self, text_len, inject=None):
        super().__init__(text_len)
        self.seen, self.inject = {}, inject

    def attend(self, site, q, k, v, rotary, mask):
        if site.kind == "single":
            self.seen[site.index] = v.clone()
            if self.inject is not None:
                v = self.inject[site.index]
        return q, k, v, rotary, rotary, mask


def test_rf_solver_edit_shares_the_values_of_the_paired_inversion_call(flux):
    """Euler, 2 steps, inject 1, every single block shared: the inversion goes 0 -> t_1 -> t_0; the
    first sampling step (t_0 -> t_1) runs the target with the values of the inversion's call at t_1 on
    its latent there (the code's pairing by step: keyed by t_0 on both sides), the second step runs
    plainly. Computed here call by call from that rule."""
    x = _x(flux)
    src, tar = flux.encode_text([SRC]), flux.encode_text([TGT])
    n_text = src.states.shape[1]
    levels = flux.sigmas(2, 8, 8).tolist()  # [t_0, t_1, 0]
    z1 = flow.euler_step(x, flux.velocity(x, 0.0, src, 1.0), 0.0, levels[1])
    rec = _Values(n_text)
    with controlled(flux.transformer, rec):
        v_up = flux.velocity(z1, levels[1], src, 1.0)
    z0 = flow.euler_step(z1, v_up, levels[1], levels[0])
    with controlled(flux.transformer, _Values(n_text, inject=rec.seen)):
        v_down = flux.velocity(z0, levels[0], tar, 3.0)
    z = flow.euler_step(z0, v_down, levels[0], levels[1])
    expected = flow.euler_step(z, flux.velocity(z, levels[1], tar, 3.0), levels[1], 0.0)
    got = rf_solver_edit(flux, x, SRC, TGT, RFSolverEditOptions(steps=2, inject=1, guidance=3.0, single_from=0,
                                                                solver="euler"))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    plain = rf_solver_edit(flux, x, SRC, TGT, RFSolverEditOptions(steps=2, inject=0, guidance=3.0, solver="euler"))
    assert (plain - got).abs().max() > 1e-4  # the sharing acted


@pytest.mark.parametrize("solver", ["rf-solver", "fireflow"])
def test_without_sharing_the_edit_is_inversion_then_sampling(flux, solver):
    """inject 0 (or no block in range) leaves the solver's inversion with the source at guidance 1 and
    its sampling with the target (flow.walk) - and sharing changes the result."""
    x = _x(flux)
    src, tar = flux.encode_text([SRC]), flux.encode_text([TGT])
    levels = flux.sigmas(4, 8, 8).tolist()
    z, _ = flow.walk(lambda z, t: flux.velocity(z, t, src, 1.0), x, levels[::-1], solver)
    expected, _ = flow.walk(lambda z, t: flux.velocity(z, t, tar, 2.5), z, levels, solver)
    for o in (RFSolverEditOptions(steps=4, inject=0, guidance=2.5, solver=solver),
              RFSolverEditOptions(steps=4, inject=4, guidance=2.5, single_from=3, solver=solver)):  # no block 3
        torch.testing.assert_close(rf_solver_edit(flux, x, SRC, TGT, o), expected, rtol=0, atol=1e-6)
    shared = rf_solver_edit(flux, x, SRC, TGT, RFSolverEditOptions(steps=4, inject=2, guidance=2.5, single_from=1,
                                                                   solver=solver))
    assert (shared - expected).abs().max() > 1e-4


def test_a_mask_keeps_rf_solver_edits_outside_on_the_inversion(flux):
    """locedit's localisation: after every sampling step the outside is put back on the inversion's
    latent of the level reached; the last level's is the source itself, so the outside ends exactly
    on it, while the inside moves."""
    x = _x(flux)
    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:6, 2:6] = 1
    o = FireFlowEditOptions(steps=4, inject=1, guidance=3.0)
    masked = rf_solver_edit(flux, x, SRC, TGT, o, mask=m)
    out = (m == 0).expand_as(x)
    assert torch.equal(masked[out], x[out])
    assert (masked - x)[~out].abs().max() > 1e-3


def test_the_kv_splice_is_exact_attention(flux):
    """Keys and values recorded by a full call, then the foreground tokens alone replayed at the same
    latent, level and prompt with no logit bias: every block attends to exactly the full sequence's
    keys and values, so the foreground's velocities are the full call's at those tokens."""
    x = _x(flux)
    text = flux.encode_text([SRC])
    ids = flow.image_ids(4, 4)
    tokens = flow.pack(x)
    fg = torch.zeros(16, dtype=torch.bool)
    fg[[1, 2, 5, 6, 11]] = True
    idx = fg.nonzero()[:, 0]
    cache = KVCache(text.states.shape[1], idx, flux.rotary(text, ids))
    with controlled(flux.transformer, cache):
        cache.clock, cache.mode = (0, "first"), "record"
        full = flux.velocity_tokens(tokens, ids, 0.4, text, 2.0)
        cache.mode = "replay"
        part = flux.velocity_tokens(tokens[:, idx], ids[idx], 0.4, text, 2.0)
    torch.testing.assert_close(part, full[:, idx], rtol=0, atol=1e-5)
    plain = flux.velocity_tokens(tokens[:, idx], ids[idx], 0.4, text, 2.0)  # without the cache: another result
    assert (plain - full[:, idx]).abs().max() > 1e-3


def test_the_inversion_attention_mask_is_the_codes_rule():
    """create_attention_mask as the authors' code executes it, restated with boolean index writes:
    rows = queries; the first write opens the text rows entirely."""
    t, fg = 3, torch.tensor([True, False, False, True, True])
    s = t + fg.numel()
    want = torch.zeros(s, s, dtype=torch.bool)
    text = torch.arange(t)
    mask_tok = fg.nonzero()[:, 0] + t
    back = (~fg).nonzero()[:, 0] + t
    want[text] = True
    want[mask_tok[:, None], text] = True
    want[mask_tok[:, None], mask_tok] = True
    want[back[:, None], text] = True
    want[back[:, None], back] = True
    assert torch.equal(_inversion_mask(t, fg)[0, 0], want)


@pytest.mark.parametrize("options", [KVEditOptions(steps=5, skip=1), KVEditOptions(steps=5, skip=0, re_init=True,
                                                                                  attn_mask=True),
                                     KVEditOptions(steps=5, skip=1, inversion_free=True, attn_mask=True)],
                         ids=["inversion", "re-init+attn-mask", "inversion-free"])
def test_kv_edit_leaves_every_background_latent_exactly(flux, options):
    x = _x(flux)
    m = torch.zeros(1, 1, 8, 8)
    m[..., 1:4, 3:7] = 1  # covers whole and partial 2x2 tokens
    calls = flux.unet_calls
    out = kv_edit(flux, x, SRC, TGT, options, mask=m)
    outside = (m == 0).expand_as(x)
    assert torch.equal(out[outside], x[outside])
    assert (out - x)[~outside].abs().max() > 1e-3
    n = options.steps - options.skip
    assert flux.unet_calls - calls == 2 * n  # inversion + edit, or two branches a step


def test_kv_edit_on_rf_solvers_inversion_pairs_each_call_with_its_recording(flux, monkeypatch):
    """``solver="rf-solver"`` (locedit's addition): the inversion and the sampling by RF-Solver's step,
    4 calls a step; every sampling call replays the keys and values recorded under the same clock -
    the midpoints at the very same level, the first calls one level lower, as the code's Euler pairs
    them; the background still ends on the source latent exactly; the default (Euler) is unchanged."""
    from locedit.flow import kvedit

    seen = []
    real = kvedit.KVCache.attend

    def spy(self, site, q, k, v, rotary, mask):
        seen.append((self.mode, self.clock))
        return real(self, site, q, k, v, rotary, mask)

    levels_at = []
    velocity = type(flux).velocity_tokens

    def level_spy(self, z, ids, t, text, guidance):
        levels_at.append(float(t))
        return velocity(self, z, ids, t, text, guidance)

    monkeypatch.setattr(kvedit.KVCache, "attend", spy)
    monkeypatch.setattr(type(flux), "velocity_tokens", level_spy)
    x = _x(flux)
    m = torch.zeros(1, 1, 8, 8)
    m[..., 1:4, 3:7] = 1
    o = KVEditOptions(steps=5, skip=1, solver="rf-solver")
    calls = flux.unet_calls
    out = kv_edit(flux, x, SRC, TGT, o, mask=m)
    n = o.steps - o.skip
    assert flux.unet_calls - calls == 4 * n
    outside = (m == 0).expand_as(x)
    assert torch.equal(out[outside], x[outside])
    per_call = len(seen) // (4 * n)  # the control sees every joint block of a call
    clocks = [seen[i * per_call] for i in range(4 * n)]
    recorded = {c: t for (mode, c), t in zip(clocks, levels_at) if mode == "record"}
    replayed = [(c, t) for (mode, c), t in zip(clocks, levels_at) if mode == "replay"]
    assert len(recorded) == 2 * n and sorted(c for c, _ in replayed) == sorted(recorded)
    levels = flux.sigmas(o.steps, 8, 8).tolist()[o.skip:]
    for (k, stage), t in replayed:
        assert recorded[(k, stage)] == pytest.approx(t if stage == "mid" else levels[k + 1])
        assert t == pytest.approx(levels[k] if stage == "first" else (levels[k] + levels[k + 1]) / 2)
    monkeypatch.undo()
    assert not torch.equal(out, kv_edit(flux, x, SRC, TGT, KVEditOptions(steps=5, skip=1), mask=m))
    for bad in (dict(solver="fireflow"), dict(solver="uni-inv"), dict(solver="rf-solver", inversion_free=True)):
        with pytest.raises(LoceditError, match="solver"):
            KVEditOptions(**bad)


def test_kv_edit_refuses_what_it_cannot_do(flux):
    x = _x(flux)
    with pytest.raises(LoceditError, match="needs a mask"):
        kv_edit(flux, x, SRC, TGT)
    with pytest.raises(LoceditError, match="covers no latent token"):
        kv_edit(flux, x, SRC, TGT, mask=torch.zeros(1, 1, 8, 8))
    with pytest.raises(LoceditError, match="re_init"):
        KVEditOptions(inversion_free=True, re_init=True)
    sd3 = from_flow_pipeline(tiny_sd3(0), name="sd3")
    with pytest.raises(LoceditError, match="runs on FLUX"):
        kv_edit(sd3, torch.zeros(1, 4, 8, 8), SRC, TGT, mask=torch.ones(1, 1, 8, 8))
    with pytest.raises(LoceditError, match="runs on FLUX"):
        rf_solver_edit(sd3, torch.zeros(1, 4, 8, 8), SRC, TGT)


def test_the_registry_and_locedit_methods_list_the_flow_editors(capsys):
    from locedit.cli import main

    assert set(FLOW_EDITORS) == {"flowedit", "rf-solver-edit", "fireflow-edit", "kv-edit", "rf-inversion", "uniedit-flow"}
    assert main(["methods", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)["flow_editors"]
    assert info["kv-edit"]["needs_mask"] and info["flowedit"]["families"] == ["sd3", "flux"]
    assert {r["flag"] for r in info["kv-edit"]["options"]} >= {"--skip", "--attn-scale", "--re-init"}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    d = tmp_path_factory.mktemp("flowcli")
    tiny_flux(0).save_pretrained(d / "flux", safe_serialization=True)
    tiny_sd3(0).save_pretrained(d / "sd3", safe_serialization=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (24, 40, 3), dtype=np.uint8)).save(d / "img.png")
    mask = np.zeros((24, 40), np.uint8)
    mask[4:16, 8:24] = 255
    Image.fromarray(mask).save(d / "mask.png")
    return d


@pytest.mark.parametrize("method,flags", [("kv-edit", ["--steps", "4", "--skip", "1", "--attn-scale", "0.5"]),
                                          ("rf-solver-edit", ["--steps", "3", "--inject", "1", "--single-from", "0"]),
                                          ("fireflow-edit", ["--steps", "3"]),
                                          ("rf-inversion", ["--steps", "3", "--gamma", "0.3", "--eta", "0.8"]),
                                          ("uniedit-flow", ["--steps", "4", "--alpha", "0.5", "--omega", "3"]),
                                          ("kv-edit", ["--steps", "3", "--skip", "0", "--quantize", "int8",
                                                       "--offload-text"])])
def test_locedit_flow_runs_each_editor_with_a_mask(saved, method, flags):
    from locedit.cli import main

    out = saved / f"{method}.png"
    assert main(["flow", str(saved / "img.png"), "--method", method, "--model", str(saved / "flux"), "--source", SRC,
                 "--target", TGT, "--mask", str(saved / "mask.png"), "--out", str(out), "--quiet", *flags]) == 0
    im = Image.open(out)
    assert im.size == (40, 24) and im.text["locedit:method"] == method
    opts = json.loads(im.text["locedit:options"])
    assert opts["steps"] == int(flags[1])


@pytest.mark.parametrize("argv,message", [
    (["--method", "kv-edit"], "--method kv-edit needs --mask"),
    (["--inject", "3"], "--inject is not used by --method flowedit"),
    (["--method", "kv-edit", "--mask", "MASK", "--n-max", "2"], "--n-max is not used by --method kv-edit"),
])
def test_locedit_flow_refuses_bad_flags_before_loading(saved, capsys, argv, message):
    from locedit.cli import main

    argv = [a.replace("MASK", str(saved / "mask.png")) for a in argv]
    out = saved / "never.png"
    assert main(["flow", str(saved / "img.png"), "--model", "no/such-model", "--source", SRC, "--target", TGT,
                 "--out", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not out.exists()


@pytest.mark.parametrize("model,method,flags", [
    ("flux", "kv-edit", ["--mask", "MASK", "--steps", "3", "--skip", "1", "--guidance", "2.5",
                         "--inversion-guidance", "1.25"]),
    ("flux", "uniedit-flow", ["--mask", "MASK", "--steps", "4", "--alpha", "0.5", "--guidance", "1.5"]),
    ("sd3", "flowedit", ["--blend-words", "red", "green", "--steps", "3", "--n-max", "2", "--tar-guidance", "4"]),
])
def test_locedit_edit_runs_the_flow_editors_as_locedit_flow_does(saved, model, method, flags):
    """``locedit edit --method NAME`` with a flow editor builds the same FlowSpec as ``locedit flow``:
    the same pixels and metadata; edit's own --steps, --guidance and --inversion-guidance set the
    editor's options of those names; the recorded command (``locedit edit ...``) runs again to the
    same pixels."""
    from locedit.cli import main

    flags = [f.replace("MASK", str(saved / "mask.png")) for f in flags]
    common = [str(saved / "img.png"), "--method", method, "--model", str(saved / model), "--source", SRC,
              "--target", TGT, "--quiet", *flags]
    a, b, c = (saved / f"route-{method}-{k}.png" for k in "abc")
    assert main(["flow", *common, "--out", str(a)]) == 0
    assert main(["edit", *common, "--out", str(b)]) == 0
    ia, ib = Image.open(a), Image.open(b)
    assert np.array_equal(np.asarray(ia), np.asarray(ib)) and ia.text == ib.text
    opts = json.loads(ib.text["locedit:options"])
    given = {f: flags[i + 1] for i, f in enumerate(flags[:-1]) if f.startswith("--")}
    assert opts["steps"] == int(given["--steps"])
    for flag in ("--guidance", "--inversion-guidance", "--tar-guidance"):
        if flag in given:
            assert opts[flag[2:].replace("-", "_")] == float(given[flag])
    argv = shlex.split(ib.text["locedit:command"])
    assert argv[:3] == ["locedit", "edit", str(saved / "img.png")]
    assert main(argv[1:] + ["--out", str(c), "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(c)), np.asarray(ib))


@pytest.mark.parametrize("argv,message", [
    (["--method", "flowedit", "--guidance", "3"], "--guidance is not used by --method flowedit (it has --src-guidance, "
                                                  "--tar-guidance)"),
    (["--method", "kv-edit", "--mask", "MASK", "--inversion-guidance"], "--inversion-guidance needs a value"),
    (["--method", "kv-edit", "--mask", "MASK", "--mask", "MASK"], "--method kv-edit takes one --mask"),
    (["--method", "flowedit", "--save-attention", "a.png"], "--save-attention is not used by --method flowedit"),
    (["--method", "flowedit", "--panel", "OUT"], "--out, --panel must be different files"),
    (["--method", "flowedit", "--region", "red=MASK"], "--region is not used by --method flowedit"),
    (["--method", "rf-solver-edit", "--preset", "paper"], "--preset is not used by --method rf-solver-edit"),
    (["--method", "flowedit", "--n-max", "0"], "n_max >= 1"),
    (["--method", "p2p", "--inject", "3"], "--inject is not used by --method p2p"),
    (["--method", "flowedit", "--self-replace", "0.5"], "--self-replace is not used by --method flowedit"),
    (["--method", "kv-edit", "--mask", "MASK", "--inversion", "ddim"], "--inversion is not used by --method kv-edit"),
    (["--method", "p2p", "--offload-text"], "--offload-text is not used by --method p2p"),
    (["--method", "p2p", "--proximal", "--inversion-guidance", "2.5"], "--inversion-guidance 2.5: a timestep"),
])
def test_locedit_edit_refuses_what_the_engine_does_not_read_before_loading(saved, capsys, argv, message):
    """Flags of the other engine are refused in one line, before any model is loaded (the model named
    does not exist) and with no output: nothing accepted and then ignored."""
    from locedit.cli import main

    out = saved / "never.png"
    argv = [a.replace("MASK", str(saved / "mask.png")).replace("OUT", str(out)) for a in argv]
    assert main(["edit", str(saved / "img.png"), "--model", "no/such-model", "--source", SRC, "--target", TGT,
                 "--out", str(out), "--quiet", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not out.exists()


@pytest.mark.parametrize("command", ["edit", "flow"])
def test_a_flow_edits_panel_shows_the_mask_it_ran_in(saved, tmp_path, command):
    """``--panel``: source | edit | mask at the input's size - here the user's mask - next to ``--out``;
    the edit itself is the same with or without the panel."""
    from locedit.cli import main

    base = [command, str(saved / "img.png"), "--method", "kv-edit", "--model", str(saved / "flux"), "--source", SRC,
            "--target", TGT, "--steps", "3", "--skip", "0", "--mask", str(saved / "mask.png"), "--quiet"]
    assert main(base + ["--out", str(tmp_path / "e.png"), "--panel", str(tmp_path / "p.png")]) == 0
    assert main(base + ["--out", str(tmp_path / "alone.png")]) == 0
    edited = np.asarray(Image.open(tmp_path / "e.png").convert("RGB"))
    assert np.array_equal(edited, np.asarray(Image.open(tmp_path / "alone.png").convert("RGB")))
    panel = np.asarray(Image.open(tmp_path / "p.png").convert("RGB"))
    assert panel.shape == (24, 120, 3)
    src = np.asarray(Image.open(saved / "img.png").convert("RGB"))
    assert np.array_equal(panel[:, 40:80], edited) and np.abs(panel[:, :40].astype(int) - src).max() <= 1
    assert np.array_equal(panel[:, 80:, 0], np.asarray(Image.open(saved / "mask.png")))


def test_a_flow_edit_takes_vae(saved, tmp_path):
    """``--vae`` reaches a flow edit's loader: the model's own VAE folder gives the same pixels,
    another VAE other pixels, and the PNG's command names it."""
    from locedit.cli import main

    tiny_flux(1).vae.save_pretrained(tmp_path / "other-vae", safe_serialization=True)
    base = ["edit", str(saved / "img.png"), "--method", "flowedit", "--model", str(saved / "flux"), "--source", SRC,
            "--target", TGT, "--steps", "2", "--n-max", "1", "--quiet"]
    outs = {}
    for name, extra in (("none", []), ("own", ["--vae", str(saved / "flux" / "vae")]),
                        ("other", ["--vae", str(tmp_path / "other-vae")])):
        assert main(base + extra + ["--out", str(tmp_path / f"{name}.png")]) == 0
        outs[name] = np.asarray(Image.open(tmp_path / f"{name}.png"))
    assert np.array_equal(outs["none"], outs["own"]) and not np.array_equal(outs["none"], outs["other"])
    assert "--vae" in shlex.split(Image.open(tmp_path / "other.png").text["locedit:command"])


def test_spdinvs_inversion_guidance_keeps_its_timestep_form():
    """``--inversion-guidance`` now parses as a number (KV-Edit's and RF-Inversion's scale); for the UNet
    methods it stays SPDInv's timestep: 400 when bare, a whole number otherwise."""
    from locedit.cli import build_parser
    from locedit.cli.edit import parse_edit

    base = ["edit", "img.png", "--source", "a red circle", "--target", "a blue circle", "--proximal"]
    assert parse_edit(build_parser().parse_args(base + ["--inversion-guidance"])).inversion_guidance == 400
    assert parse_edit(build_parser().parse_args(base + ["--inversion-guidance", "300"])).inversion_guidance == 300
    for bad in ("2.5", "-1"):
        with pytest.raises(LoceditError, match="a timestep, a whole number"):
            parse_edit(build_parser().parse_args(base + ["--inversion-guidance", bad]))


def test_every_edit_flag_is_read_or_refused_by_the_flow_route():
    """Each of ``locedit edit``'s flags is, for a flow editor, read into its FlowSpec (listed here),
    one of edit's own flags set as the editor's option (SHARED_FLAGS), an option in the table the route
    checks (a flow editor's, or a UNet method's or inversion's - refused there), or a UNet-only flag
    the route refuses: a new flag fails this test until it is placed, never accepted and ignored."""
    import argparse

    from locedit.cli import build_parser
    from locedit.cli.edit import _edit_table
    from locedit.cli.flow import SHARED_FLAGS, UNET_ONLY_FLAGS

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    dests = {a.dest for a in sub.choices["edit"]._actions} - {"help"}
    read = {"image", "source", "target", "method", "model", "vae", "device", "dtype", "seed", "fit", "mask", "mask_rule",
            "blend_words", "quantize", "offload_text", "out", "panel", "max_image_pixels", "max_image_mb", "spec",
            "json", "quiet", "debug", "verbose"}
    options = {owners[0][1].dest for owners in _edit_table().values()}
    assert dests - read - set(SHARED_FLAGS) - set(UNET_ONLY_FLAGS) - options == set()


def test_locedit_edit_with_a_flow_editor_needs_a_model(saved, capsys):
    from locedit.cli import main

    assert main(["edit", str(saved / "img.png"), "--method", "flowedit", "--source", SRC, "--target", TGT,
                 "--out", str(saved / "never.png"), "--quiet"]) == 2
    assert "--method flowedit needs --model" in capsys.readouterr().err


def test_locedit_flow_refuses_a_flux_only_editor_on_sd3(saved, capsys):
    from locedit.cli import main

    assert main(["flow", str(saved / "img.png"), "--method", "rf-solver-edit", "--model", str(saved / "sd3"),
                 "--source", SRC, "--target", TGT, "--out", str(saved / "no.png"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "rf-solver-edit runs on flux models" in err[0]


def test_the_blend_words_mask_is_p2ps_rule_on_the_recorded_maps(flux):
    """The mask = union over (prompt, word) of the word's maps recorded at the blend levels on the
    noised source, max-pooled (radius 1), max-normalised, thresholded (0.3 by default), taken to the
    latent grid by nearest."""
    import torch.nn.functional as F

    from locedit.flow.maps import BLEND_LEVELS, blend_words_mask, recording, t5_positions

    x = _x(flux, size=16)
    pairs = [(SRC, "red circle"), (TGT, "green")]
    got = blend_words_mask(flux, x, pairs, seed=4, threshold=0.9)  # the random model's maps are flat: 0.3 keeps all
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    want = torch.zeros(1, 1, 8, 8)
    for prompt, word in pairs:
        text = flux.encode_text([prompt])
        with recording(flux.transformer, text.states.shape[1]) as store:
            for s in BLEND_LEVELS:
                flux.velocity((1 - s) * x + s * noise, s, text)
        m = F.max_pool2d(store.maps(t5_positions(flux.pipe.tokenizer_2, prompt, word), 8, 8)[:, None], 3, 1, 1)
        want = torch.maximum(want, (m / m.max() > 0.9).float())
    assert torch.equal(got, want.repeat_interleave(2, 2).repeat_interleave(2, 3))
    assert 0 < got.mean() < 1


def test_locedit_flow_with_blend_words(saved, capsys):
    from locedit.cli import main

    base = ["flow", str(saved / "img.png"), "--model", str(saved / "flux"), "--source", SRC, "--target", TGT, "--quiet"]
    out = saved / "words.png"
    assert main(base + ["--method", "kv-edit", "--steps", "3", "--skip", "0", "--blend-words", "red", "green",
                        "--out", str(out)]) == 0
    assert json.loads(Image.open(out).text["locedit:blend_words"]) == ["red", "green"]
    capsys.readouterr()
    for extra, message in ((["--blend-words", "cat", "green"], "'cat' is not a word of --source"),
                           (["--blend-words", "red", "green", "--mask", str(saved / "mask.png")], "not both")):
        assert main(base + extra + ["--out", str(saved / "never.png")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and message in err[0] and not (saved / "never.png").exists()
    sd3 = saved / "sd3-words.png"
    assert main(["flow", str(saved / "img.png"), "--model", str(saved / "sd3"), "--source", SRC, "--target", TGT,
                 "--blend-words", "red", "green", "--steps", "3", "--n-max", "2", "--out", str(sd3), "--quiet"]) == 0
    assert json.loads(Image.open(sd3).text["locedit:blend_words"]) == ["red", "green"]


def test_sd3_joint_attention_under_the_control_and_its_word_maps():
    """SD3's joint blocks through the control: the output is bitwise diffusers' own; the maps see every
    joint block once per call, and a word's CLIP tokens (start token at 0) are where the tokenizer
    puts them; the image queries' share of all text keys is below 1 and above the word's."""
    from locedit.flow.maps import recording, word_positions

    sd3 = from_flow_pipeline(tiny_sd3(0), name="sd3")
    x = _x(sd3)
    text = sd3.encode_text([SRC])
    plain = sd3.velocity(x, 0.6, text)
    with recording(sd3.transformer, text.states.shape[1]) as store:
        assert torch.equal(sd3.velocity(x, 0.6, text), plain)
    assert store.count == sd3.transformer.config.num_layers
    pos = word_positions(sd3, SRC, "circle")
    ids = sd3.pipe.tokenizer(SRC).input_ids
    assert [sd3.pipe.tokenizer.convert_ids_to_tokens(ids[p]) for p in pos] == ["circle</w>"]
    word = store.maps(pos, 4, 4)
    everything = store.maps(list(range(text.states.shape[1])), 4, 4)
    assert (everything < 1).all() and (everything > word).all()


def test_the_options_module_names_the_solvers_walk_runs():
    from locedit.flow.options import SOLVERS

    assert SOLVERS == flow.SOLVERS


def test_rf_inversion_is_algorithms_1_and_2_written_out(flux):
    """Two steps, as diffusers' community pipeline runs them: the forward ODE calls the model at
    t_i = i / (N + 1) on the empty prompt at guidance 0 and moves by the schedule's gaps from the top;
    the reverse ODE calls it at s_i with the target, eta pulling towards y_0 on steps [start, stop)."""
    from locedit.flow.options import RFInversionOptions
    from locedit.flow.rf_inversion import rf_inversion_edit

    x = _x(flux)
    o = RFInversionOptions(steps=2, gamma=0.4, eta=0.7, start=0.0, stop=0.5, guidance=2.0)
    got = rf_inversion_edit(flux, x, SRC, TGT, o, seed=5)
    s = flux.sigmas(2, 8, 8).tolist()
    ids = flow.image_ids(4, 4)
    y0 = flow.pack(x)
    y1 = torch.randn(y0.shape, generator=torch.Generator().manual_seed(5))
    empty, tar = flux.encode_text([""]), flux.encode_text([TGT])
    y = y0
    for i in range(2):
        t = i / 3
        u = flux.velocity_tokens(y, ids, t, empty, 0.0)
        y = y + (u + 0.4 * ((y1 - y) / (1 - t) - u)) * (s[i] - s[i + 1])
    for i in range(2):
        v = -flux.velocity_tokens(y, ids, s[i], tar, 2.0)
        if i == 0:  # int(0.5 * 2) = 1: only the first step is pulled
            v = v + 0.7 * ((y0 - y) / s[i] - v)
        y = y + v * (s[i] - s[i + 1])
    torch.testing.assert_close(got, flow.unpack(y, 8, 8), rtol=0, atol=1e-6)


def test_rf_inversion_with_eta_1_everywhere_lands_on_the_image_and_a_mask_keeps_the_outside(flux):
    """eta 1 on every step: v = (y_0 - X) / s_i, so the last step (s_N = 0) lands on y_0; with a mask
    the outside ends on y_0 whatever eta does, while the inside moves."""
    from locedit.flow.options import RFInversionOptions
    from locedit.flow.rf_inversion import rf_inversion_edit

    x = _x(flux)
    back = rf_inversion_edit(flux, x, SRC, TGT, RFInversionOptions(steps=4, eta=1.0, stop=1.0))
    torch.testing.assert_close(back, x, rtol=0, atol=1e-5)
    m = torch.zeros(1, 1, 8, 8)
    m[..., :4, :4] = 1
    edited = rf_inversion_edit(flux, x, SRC, TGT, RFInversionOptions(steps=4, eta=0.0), mask=m)
    out = (m == 0).expand_as(x)
    assert torch.equal(edited[out], x[out]) and (edited - x)[~out].abs().max() > 1e-2


def test_uni_inv_is_the_predictor_corrector_written_out(flux):
    """flow.walk's uni-inv: x~ = x + D v(x, t) (then the previous corrector velocity), x' = x + D v(x~, t')."""
    x = _x(flux)
    text = flux.encode_text([SRC])

    def v(z, t):
        return flux.velocity(z, t, text, 1.0)

    levels = [0.0, 0.3, 0.7]
    got, calls = flow.walk(v, x, levels, "uni-inv")
    v1 = v(x + 0.3 * v(x, 0.0), 0.3)
    x1 = x + 0.3 * v1
    v2 = v(x1 + 0.4 * v1, 0.7)
    torch.testing.assert_close(got, x1 + 0.4 * v2, rtol=0, atol=1e-6)
    assert calls == 3


def test_uniedit_flow_with_identical_prompts_is_delayed_inversion_then_sampling(flux):
    """v_tar = v_src: the map is 0 (the code's 0/0 is not kept), the fused velocity is the source's, so
    UniEdit-Flow is Uni-Inv over k = round(alpha N) steps (empty prompt, guidance 1) then k Euler steps
    back with the source at its guidance: k + 1 + 2k calls; another target moves it; a mask keeps the
    outside exactly on the source."""
    from locedit.flow.options import UniEditOptions
    from locedit.flow.uniedit import uniedit_flow

    x = _x(flux)
    o = UniEditOptions(steps=5, alpha=0.6, omega=5.0, guidance=2.0)  # k = 3
    calls = flux.unet_calls
    same = uniedit_flow(flux, x, SRC, SRC, o)
    assert flux.unet_calls - calls == 3 + 1 + 2 * 3
    levels = flux.sigmas(5, 8, 8).tolist()
    empty, src = flux.encode_text([""]), flux.encode_text([SRC])
    z, _ = flow.walk(lambda z, t: flux.velocity(z, t, empty, 1.0), x, levels[::-1][:4], "uni-inv")
    want, _ = flow.walk(lambda z, t: flux.velocity(z, t, src, 2.0), z, levels[2:], "euler")
    torch.testing.assert_close(same, want, rtol=0, atol=1e-5)
    edited = uniedit_flow(flux, x, SRC, TGT, o)
    assert (edited - same).abs().max() > 1e-3 and torch.isfinite(edited).all()
    m = torch.zeros(1, 1, 8, 8)
    m[..., 4:, :] = 1
    masked = uniedit_flow(flux, x, SRC, TGT, o, mask=m)
    out = (m == 0).expand_as(x)
    assert torch.equal(masked[out], x[out]) and (masked - x)[~out].abs().max() > 1e-3


@pytest.mark.parametrize("solver,inversion_calls", [("euler", 3), ("rf-solver", 6), ("fireflow", 4)])
def test_uniedit_flow_on_another_solvers_inversion(flux, solver, inversion_calls):
    """``solver`` (locedit's addition): with identical prompts UniEdit-Flow is that solver's delayed
    inversion (k = 3 steps, its calls) then k Euler steps back; ``--zero-init`` stays Uni-Inv's."""
    from locedit.flow.options import UniEditOptions
    from locedit.flow.uniedit import uniedit_flow

    x = _x(flux)
    o = UniEditOptions(steps=5, alpha=0.6, guidance=2.0, solver=solver)
    calls = flux.unet_calls
    same = uniedit_flow(flux, x, SRC, SRC, o)
    assert flux.unet_calls - calls == inversion_calls + 2 * 3
    levels = flux.sigmas(5, 8, 8).tolist()
    empty, src = flux.encode_text([""]), flux.encode_text([SRC])
    z, _ = flow.walk(lambda z, t: flux.velocity(z, t, empty, 1.0), x, levels[::-1][:4], solver)
    want, _ = flow.walk(lambda z, t: flux.velocity(z, t, src, 2.0), z, levels[2:], "euler")
    torch.testing.assert_close(same, want, rtol=0, atol=1e-5)
    assert (same - uniedit_flow(flux, x, SRC, SRC, UniEditOptions(steps=5, alpha=0.6, guidance=2.0))).abs().max() > 1e-4
    with pytest.raises(LoceditError, match="zero-init"):
        UniEditOptions(zero_init=True, solver=solver)


def test_the_bench_runs_flow_editors_on_a_flow_model(tmp_path):
    """``locedit bench`` rows for flow editors: KV-Edit in the item's mask, FlowEdit with ``-mask`` and
    without; their background metrics; a UNet method on the flow model is a row with its refusal."""
    from locedit.bench import BenchConfig, load_rows, open_dataset, run_bench
    from locedit.bench.names import bench_methods

    assert {"kv-edit", "flowedit-mask", "uniedit-flow-mask"} <= set(bench_methods())
    assert "kv-edit-mask" not in bench_methods()
    b = from_flow_pipeline(tiny_flux(0), name="tiny-flux")
    b.pipe.default_sample_size = 16  # a 32 px square: a 16 x 16 latent
    run_bench(open_dataset("shapes:n=2,seed=3"), ["kv-edit", "flowedit-mask", "flowedit", "p2p"], tmp_path, b, None,
              BenchConfig())
    rows = {(r["id"], r["method"]): r for r in load_rows(tmp_path)}
    assert len(rows) == 8
    for (item, method), r in rows.items():
        if method == "p2p":
            assert "runs on UNet models" in r["error"]
            continue
        assert "error" not in r, r
        assert r["unet_calls"] > 0 and math.isfinite(r["bg_psnr"])
    kv = [r for (_, m), r in rows.items() if m == "kv-edit"]
    free = [r for (_, m), r in rows.items() if m == "flowedit"]
    assert all(r["unet_calls"] == 2 * (28 - 4) for r in kv) and all(r["unet_calls"] == 2 * 24 for r in free)


def test_int8_weights_quarter_the_transformer_and_keep_its_velocity(saved):
    """--quantize int8 (torchao, on the CPU before the weights move): the linear weights take a byte
    each (with their scales: under a third of fp32's bytes), the velocity stays within 2 % of the
    full-precision one, KV-Edit's background stays exact; --offload-text leaves the encoders on the
    CPU; a UNet model is refused both in one line."""
    from locedit.diffusion import load_model
    from locedit.diffusion.quantize import weight_bytes
    from locedit.errors import ModelLoadError

    full = load_model(str(saved / "flux"), "cpu", "fp32")
    small = load_model(str(saved / "flux"), "cpu", "fp32", quantize="int8", offload_text=True)
    assert small.offload_text and next(small.pipe.text_encoder_2.parameters()).device.type == "cpu"
    linear = [m for m in full.transformer.modules() if isinstance(m, torch.nn.Linear)]
    q_linear = [m for m in small.transformer.modules() if isinstance(m, torch.nn.Linear)]
    assert sum(weight_bytes(m) for m in q_linear) < sum(weight_bytes(m) for m in linear) / 3
    x, text = _x(full), full.encode_text([SRC])
    v, vq = full.velocity(x, 0.5, text, 3.5), small.velocity(x, 0.5, small.encode_text([SRC]), 3.5)
    assert (vq - v).abs().max() < 0.02 * v.abs().max() and not torch.equal(vq, v)
    m = torch.zeros(1, 1, 8, 8)
    m[..., 2:6, 2:6] = 1
    out = kv_edit(small, x, SRC, TGT, KVEditOptions(steps=4, skip=1), mask=m)
    assert torch.equal(out[(m == 0).expand_as(x)], x[(m == 0).expand_as(x)])
    with pytest.raises(ModelLoadError, match="apply to FLUX and SD3"):
        load_model("tiny-random", "cpu", "fp32", quantize="int8")


def test_a_flow_spec_runs_in_the_library_and_its_command_reproduces_it(saved):
    """api.flow_edit(FlowSpec) with the image and mask in memory equals the same spec from files, and
    ``spec.command()`` run as a command line writes the same picture (its PNG records the command)."""
    import shlex

    from locedit import api
    from locedit.cli import main
    from locedit.flow import KVEditOptions
    from locedit.spec import FlowSpec

    spec = FlowSpec(str(saved / "img.png"), SRC, TGT, str(saved / "flux"), method="kv-edit",
                    options=KVEditOptions(steps=3, skip=0, attn_scale=0.5), mask=str(saved / "mask.png"), seed=3)
    from_files = api.flow_edit(spec)
    memory = {"I": np.asarray(Image.open(saved / "img.png").convert("RGB")),
              "M": np.asarray(Image.open(saved / "mask.png")) > 127}
    in_memory = api.flow_edit(spec.replace(image="I", mask="M"), files=memory)
    assert torch.equal(from_files.edited, in_memory.edited) and from_files.model_calls == 6
    out = saved / "again.png"
    argv = shlex.split(spec.command())[1:]
    assert "--attn-scale" in argv and "--skip" in argv
    assert main(argv + ["--out", str(out), "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(out).convert("RGB")), np.asarray(from_files.image))
    assert Image.open(out).text["locedit:command"] == spec.command()
    with pytest.raises(LoceditError, match="unknown flow editor"):
        api.check_flow(spec.replace(method="p2p"))
    with pytest.raises(LoceditError, match="takes KVEditOptions"):
        api.check_flow(spec.replace(options=RFSolverEditOptions()))


def test_a_flow_folder_names_the_side_it_was_trained_at(tmp_path):
    """locedit's own training output (training.json's image_size, as shapes-flow's) sets the side images
    are fitted to, and its T5 tokenizer's length the prompts' (the tiny model's is shapes-flow's, 32);
    any other folder keeps the pipeline's defaults (FLUX: 512 T5 tokens)."""
    from locedit.diffusion import load_model

    tiny_flux(0).save_pretrained(tmp_path / "m", safe_serialization=True)
    plain = load_model(str(tmp_path / "m"), "cpu", "fp32")
    assert plain.image_size == 128 * 2  # FluxPipeline's default_sample_size x the tiny VAE's factor
    assert plain.encode_text(["a red circle"]).states.shape[1] == 512
    (tmp_path / "m" / "training.json").write_text(json.dumps({"image_size": 32}))
    trained = load_model(str(tmp_path / "m"), "cpu", "fp32")
    assert trained.image_size == 32
    assert trained.encode_text(["a red circle"]).states.shape[1] == trained.pipe.tokenizer_2.model_max_length == 32


def test_a_guidance_scale_is_refused_where_no_guidance_acts(saved, capsys):
    """On a FLUX transformer without the guidance embedding (FLUX.1-schnell, shapes-flow) the velocity
    is the same at every guidance scale, so an editor's or inversion's guidance set away from its
    default is refused in one line (exit 2, nothing written) instead of being accepted and ignored;
    the defaults run, and the same setting runs on a model with the embedding."""
    from locedit import api
    from locedit.cli import main
    from locedit.flow import FlowEditOptions
    from locedit.flow.invert import check_inversion
    from locedit.flow.options import FlowInversionOptions
    from locedit.spec import FlowSpec

    tiny_flux(0, guidance_embeds=False).save_pretrained(saved / "schnell", safe_serialization=True)
    plain = from_flow_pipeline(tiny_flux(0, guidance_embeds=False), name="schnell")
    x, text = _x(plain), plain.encode_text([SRC])
    assert plain.guidance_inert and torch.equal(plain.velocity(x, 0.6, text, 1.0), plain.velocity(x, 0.6, text, 5.5))
    spec = FlowSpec(str(saved / "img.png"), SRC, TGT, str(saved / "schnell"), method="kv-edit",
                    options=KVEditOptions(steps=2, skip=0, guidance=3.0), mask=str(saved / "mask.png"))
    with pytest.raises(LoceditError, match=r"^--guidance 3: .*no distilled guidance"):
        api.flow_edit(spec)
    assert api.flow_edit(spec.replace(options=KVEditOptions(steps=2, skip=0))).model_calls == 4
    assert api.flow_edit(spec.replace(model=str(saved / "flux"))).model_calls == 4
    out = saved / "refused.png"
    argv = ["flow", str(saved / "img.png"), "--model", str(saved / "schnell"), "--source", SRC, "--target", TGT,
            "--steps", "2", "--tar-guidance", "9", "--out", str(out), "--quiet"]
    capsys.readouterr()
    assert main(argv) == 2 and not out.exists()
    err = capsys.readouterr().err.strip()
    assert "--tar-guidance 9" in err and len(err.splitlines()) == 1 and "Traceback" not in err
    with pytest.raises(LoceditError, match="--guidance 2: "):
        check_inversion(plain, "euler", FlowInversionOptions(guidance=2.0))
    assert check_inversion(plain, "euler", None)[1] == FlowInversionOptions()
    assert not from_flow_pipeline(tiny_flux(0), name="dev").guidance_inert
    assert FlowEditOptions().tar_guidance is None  # FlowEdit's family defaults fill in later and pass
