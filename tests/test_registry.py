"""The registries' one shape (issue 30): a new method and a new inversion are each one module (here,
this one) and one registry line (``monkeypatch.setitem``); the library, the command line and
``locedit methods`` take them with no other change."""

import json
from dataclasses import dataclass, field

import pytest
import torch
from conftest import SRC, TGT

from locedit import pipeline
from locedit.diffusion.sampler import SAMPLERS
from locedit.events import StepState, Subscriber
from locedit.instruct import INSTRUCT_METHODS
from locedit.inversion import INVERSIONS, Inversion, Trajectory
from locedit.methods import METHODS, Method, Plan
from locedit.options import Citation
from locedit.registry import Entry

TOY_PAPER = Citation("Toy et al., A Toy, 2026", "Eq. 1", "nowhere")


# ---- a toy inversion: every level is the image latent -------------------------------------------------
@dataclass(frozen=True)
class ToyInversionOptions:
    scale: float = field(default=1.0, metadata={"flag": "toy-scale", "type": float, "help": "latent scale"})


class ToyInversion(Inversion):
    name, Options, summary, papers = "toy", ToyInversionOptions, "the image latent at every level", (TOY_PAPER,)

    @staticmethod
    def run(bundle, z0, prompt, num_steps, guidance, options, progress=None):
        return Trajectory("toy", prompt, num_steps, guidance, [z0.float() * options.scale] * (num_steps + 1))


# ---- a toy method: a subscriber that scales the target row after every step ---------------------------
@dataclass(frozen=True)
class ToyOptions:
    strength: float = field(default=0.5, metadata={"flag": "toy-strength", "type": float, "help": "target scale"})


class Scale(Subscriber):
    def __init__(self, strength):
        self.strength, self.steps = strength, []

    def after_step(self, state: StepState) -> None:
        self.steps.append(state.step)
        state.z_next = torch.cat([state.z_next[:1], state.z_next[1:] * self.strength])


class Toy(Method):
    name, Options, summary, papers = "toy", ToyOptions, "scales the target after each step", (TOY_PAPER,)
    uses = frozenset({"inversion"})
    last = None

    @classmethod
    def build(cls, bundle, request, options) -> Plan:
        cls.last = Scale(options.strength)
        return Plan(None, (cls.last,))


@pytest.fixture
def toys(monkeypatch):
    monkeypatch.setitem(INVERSIONS, "toy", ToyInversion)  # the one registry line of each
    monkeypatch.setitem(METHODS, "toy", Toy)


def test_every_registry_has_the_one_shape():
    for registry in (METHODS, INSTRUCT_METHODS, INVERSIONS, SAMPLERS):
        for name, entry in registry.items():
            assert issubclass(entry, Entry) and entry.name == name and entry.summary and entry.papers, name


def test_a_toy_method_and_inversion_run_through_the_library(toys, bundle, image):
    traj = pipeline.invert(bundle, image, SRC, "toy", num_steps=3, options=ToyInversionOptions(scale=1.0))
    assert traj.method == "toy" and torch.equal(traj.noise, traj.latents[0])
    plain = pipeline.sample(bundle, traj, [SRC, TGT])
    same = pipeline.edit(bundle, None, SRC, TGT, method="toy", options=ToyOptions(strength=1.0), trajectory=traj)
    assert Toy.last.steps == [0, 1, 2] and torch.equal(same.sample.latents, plain.latents)  # identity: the plain loop
    half = pipeline.edit(bundle, image, SRC, TGT, method="toy", inversion="toy", num_steps=3)
    assert torch.equal(half.sample.latents[0], plain.latents[0])  # the source row is untouched
    assert not torch.allclose(half.sample.latents[1], plain.latents[1])


def test_a_toy_method_and_inversion_run_from_the_command_line(toys, model_dir, scene_png, tmp_path, capsys):
    from locedit.cli import main

    out = tmp_path / "toy.png"
    rc = main(["edit", scene_png[0], "--source", SRC, "--target", TGT, "--model", str(model_dir), "--steps", "2",
               "--method", "toy", "--toy-strength", "0.8", "--inversion", "toy", "--toy-scale", "1.5",
               "--out", str(out), "--json"])
    assert rc == 0 and out.exists()
    summary = json.loads(capsys.readouterr().out)
    assert summary["method"] == "toy" and summary["inversion"] == "toy"
    assert summary["options"] == {"strength": 0.8} and summary["inversion_options"] == {"scale": 1.5}
    assert main(["methods", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["methods"]["toy"]["summary"] == Toy.summary and "toy" in listed["inversions"]


def test_a_method_cites_its_own_paper_and_names_the_entries_it_builds_on():
    """Issue 31: MAG-Edit and MDE-Edit no longer repeat P2P's citation; they name p2p as what they build on."""
    from locedit.cli.methods import describe_registries

    info = describe_registries()["methods"]
    p2p = info["p2p"]["papers"][0]["paper"]
    for name in ("mag-edit", "mde-edit", "locinv"):
        assert p2p not in [c["paper"] for c in info[name]["papers"]] and "p2p" in info[name]["built_on"]
    for registry in (METHODS, INSTRUCT_METHODS):
        for entry in registry.values():
            assert all(b in registry and b != entry.name for b in entry.built_on), entry.name
