"""The method interface: the registry drives the pipeline, the CLI, the bench and `locedit methods`;
a flag or input the chosen method does not use is refused; controllers can reach q/k/v."""

import json
from dataclasses import dataclass, field

import pytest
import torch
from PIL import Image

from locedit import pipeline
from locedit.attention import AttentionController, BatchLayout, controlled_attention
from locedit.cli import main
from locedit.methods import METHODS, Method, Plan

FAST = ["--steps", "2", "--quiet", "--model", "tiny-random"]


def run(argv, capsys):
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def refused(argv, capsys, tmp_path, needle):
    out = tmp_path / "o.png"
    code, _, err = run(argv + ["--out", str(out)], capsys)
    assert code == 2, err
    lines = [ln for ln in err.strip().splitlines() if ln]
    assert len(lines) == 1 and lines[0].startswith("error:") and needle in lines[0], err
    assert "Traceback" not in err and not out.exists()


# ---- no silent flags ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("extra,needle", [
    (["--mask", "MASK"], "--mask/--box/--mask-from is not used by --method mag-edit"),
    (["--blend-words", "red", "blue"], "--blend-words is not used by --method mag-edit"),
    (["--attribute", "blue=MASK"], "--attribute is not used by --method mag-edit"),
    (["--ccl-form", "spatial-ratio"], "--ccl-form is not used by --method mag-edit"),
    (["--spd-steps", "3"], "--spd-steps is not used by --method mag-edit with --inversion null-text"),
    (["--locinv-inner", "2"], "--locinv-inner is not used"),
])
def test_flags_the_method_does_not_use_are_refused(scene_png, tmp_path, capsys, extra, needle):
    img, mask = scene_png
    extra = [e.replace("MASK", mask) for e in extra]
    refused(["edit", img, "--source", "a red square", "--target", "a blue square", "--method", "mag-edit",
             "--region", f"blue={mask}"] + extra + FAST, capsys, tmp_path, needle)


def test_locinv_refuses_an_inversion_and_p2p_refuses_regions(scene_png, tmp_path, capsys):
    img, mask = scene_png
    base = ["edit", img, "--source", "a red square", "--target", "a blue square"]
    refused(base + ["--method", "locinv", "--region", f"square={mask}", "--inversion", "ddim"] + FAST, capsys,
            tmp_path, "--inversion is not used by --method locinv")
    refused(base + ["--region", f"blue={mask}"] + FAST, capsys, tmp_path, "--region is not used by --method p2p")
    refused(base + ["--blend-threshold", "0.5"] + FAST, capsys, tmp_path, "--blend-threshold needs --blend-words")
    refused(base + ["--reweight", "blue=2"] + FAST, capsys, tmp_path, "--reweight needs --p2p reweight")


def test_metadata_records_only_what_shaped_the_output(scene_png, tmp_path, capsys):
    img, mask = scene_png
    out = tmp_path / "o.png"
    code, _, err = run(["edit", img, "--source", "a red square", "--target", "a blue square", "--method", "mag-edit",
                        "--region", f"blue={mask}", "--inversion", "ddim", "--guided-steps", "1", "--iterations", "1",
                        "--preset", "official", "--out", str(out)] + FAST, capsys)
    assert code == 0, err
    with Image.open(out) as im:
        text = dict(im.text)
    opts = json.loads(text["locedit:options"])
    assert opts["guidance"]["guided_steps"] == 1 and opts["loss"] == "token-ratio"
    assert text["locedit:preset"] == "official" and text["locedit:inversion"] == "ddim"
    assert json.loads(text["locedit:region"]) == [f"blue={mask}"]
    for unused in ("locedit:mask", "locedit:blend_words", "locedit:attribute", "locedit:bind", "locedit:edit_options"):
        assert unused not in text


def test_preset_official_reaches_the_inversion_options(scene_png, tmp_path, capsys):
    img, _ = scene_png
    out = tmp_path / "o.png"
    code, _, err = run(["edit", img, "--source", "a red square", "--target", "a blue square", "--inversion", "spd",
                        "--spd-steps", "1", "--preset", "official", "--out", str(out)] + FAST, capsys)
    assert code == 0, err
    with Image.open(out) as im:
        inv = json.loads(im.text["locedit:inversion_options"])
    assert (inv["optimizer"], inv["objective"], inv["max_steps"]) == ("adamw", "mse", 1)


def test_methods_lists_every_registry_entry_with_options_and_papers(capsys):
    code, out, _ = run(["methods", "--json"], capsys)
    assert code == 0
    info = json.loads(out)
    from locedit.instruct import INSTRUCT_METHODS

    assert set(info["methods"]) == set(METHODS) | set(INSTRUCT_METHODS)
    assert info["methods"]["lime"]["official_differs"]["points"] == [100, 1]
    mde = info["methods"]["mde-edit"]
    assert mde["official_differs"]["ccl_form"] == ["token-ratio", "spatial-ratio"]
    flags = {row["flag"]: row for row in mde["options"]}
    assert flags["--lambda-ccl"]["default"] == 1.25 and flags["--lambda-ccl"]["official"] == 1.5
    assert "Eq." in mde["papers"][0]["equations"] and "RainbowZhuu/MDE-Edit" in mde["papers"][0]["code"]
    assert info["inversions"]["spd"]["official_differs"]["optimizer"] == ["sgd", "adamw"]


# ---- adding a method is one module and one registry line ----------------------------------------------------
@dataclass(frozen=True)
class ToyOptions:
    scale: float = field(default=1.0, metadata={"flag": "toy-scale", "type": float, "help": "toy: probability scale"})


class ScaleTarget(AttentionController):
    """Scales the target's cross-attention probabilities (a toy engine)."""

    def __init__(self, scale):
        super().__init__()
        self.scale = scale

    def wants(self, site):
        return site.kind == "cross" and self.clock.phase == "sample"

    def edit_probs(self, probs, site):
        probs = probs.clone()
        t = self.layout.index("target", "cond")
        probs[t] = probs[t] * self.scale
        return probs


class Toy(Method):
    name = "toy"
    summary = "a toy engine for the registry test"
    Options = ToyOptions
    uses = frozenset({"inversion"})

    @classmethod
    def build(cls, bundle, request, options):
        return Plan(ScaleTarget(options.scale))


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(METHODS, "toy", Toy)  # the one registry line; nothing else is patched
    yield


def test_a_new_method_runs_through_pipeline_cli_and_bench(toy_registered, bundle, image, scene_png, tmp_path, capsys):
    src, tgt = "a red square", "a red square"
    traj = pipeline.invert(bundle, image, src, "ddim", num_steps=3)
    plain = pipeline.edit(bundle, None, src, tgt, trajectory=traj, method="toy", options=ToyOptions(1.0))
    scaled = pipeline.edit(bundle, None, src, tgt, trajectory=traj, method="toy", options=ToyOptions(3.0))
    torch.testing.assert_close(plain.edited, plain.source, rtol=1e-4, atol=1e-4)  # scale 1 changes nothing
    assert (scaled.edited - scaled.source).abs().max() > 1e-3
    img, _ = scene_png
    out = tmp_path / "toy.png"
    code, _, err = run(["edit", img, "--source", src, "--target", tgt, "--method", "toy", "--toy-scale", "2",
                        "--inversion", "ddim", "--out", str(out)] + FAST, capsys)
    assert code == 0, err
    with Image.open(out) as im:
        assert json.loads(im.text["locedit:options"]) == {"scale": 2.0}
    code, _, err = run(["edit", img, "--source", src, "--target", tgt, "--toy-scale", "2", "--out", str(out)] + FAST,
                       capsys)
    assert code == 2 and "--toy-scale is not used by --method p2p" in err
    code, _, err = run(["bench", "--dataset", "shapes:n=1,seed=0,kinds=colour", "--methods", "toy", "--out",
                        str(tmp_path / "bench"), "--steps", "2", "--quiet", "--model", "tiny-random",
                        "--inversion", "ddim"], capsys)
    assert code == 0, err
    rows = [json.loads(ln) for ln in (tmp_path / "bench" / "results.jsonl").read_text().splitlines()]
    assert rows[0]["method"] == "toy" and "error" not in rows[0]


# ---- q/k/v through the same install-and-restore context ------------------------------------------------------
class SourceKV(AttentionController):
    """At self-attention, the target row's queries, keys and values become the source row's."""

    def wants(self, site):
        return site.kind == "self"

    def edit_qkv(self, q, k, v, site):
        s, t = self.layout.index("source", "cond"), self.layout.index("target", "cond")
        q, k, v = q.clone(), k.clone(), v.clone()
        q[t], k[t], v[t] = q[s], k[s], v[s]
        return q, k, v


def test_a_controller_can_rewrite_queries_keys_and_values(bundle):
    ctrl = SourceKV(layout=BatchLayout.single(("source", "target")))
    g = torch.Generator().manual_seed(0)
    z = torch.randn(1, 4, 16, 16, generator=g).expand(2, -1, -1, -1).clone()
    z[1] += 0.5
    emb = bundle.encode_text(["a cat", "a cat"])
    with torch.no_grad():
        plain = bundle.predict_eps(z, 500, 0.3, emb)
        with controlled_attention(bundle.unet, ctrl):
            edited = bundle.predict_eps(z, 500, 0.3, emb)
        after = bundle.predict_eps(z, 500, 0.3, emb)
    torch.testing.assert_close(edited[0], plain[0], rtol=1e-4, atol=1e-5)  # the source row is untouched
    assert (edited[1] - plain[1]).abs().max() > 1e-3  # the target's self-attention now reads the source's
    assert torch.equal(after, plain)  # the processors were restored


def test_every_method_runs_with_its_defaults_alone_on_the_inversion_its_paper_uses(scene_png, tmp_path, capsys):
    """Issue 31: with no --inversion a method runs on its paper's (PnP: DDIM, whose null embedding its
    negative prompt may replace; it was refused on the null-text default)."""
    import json

    from locedit.cli import main
    from locedit.methods import METHODS

    assert {name: m.inversion for name, m in METHODS.items() if "inversion" in m.uses} == {
        "p2p": "null-text", "mag-edit": "null-text", "mde-edit": "null-text", "masactrl": "ddim", "pnp": "ddim",
        "blended": "ddim", "diffedit": "ddim"}
    out = tmp_path / "pnp.png"
    assert main(["edit", scene_png[0], "--source", "a red square", "--target", "a blue square", "--method", "pnp",
                 "--model", "tiny-random", "--steps", "2", "--quiet", "--json", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["inversion"] == "ddim" and out.exists()
