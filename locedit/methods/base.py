"""The method interface: what an editing method declares and what the pipeline asks of it.

A method is a class with class attributes only (no instances): its options dataclass, the inputs
it uses, the papers it implements, a ``check`` that runs every validation before the first UNet
call, and a ``build`` that returns what to install for sampling (controllers, latent guidance).
Methods that make their own trajectory (LocInv's token learning; the noise-based baselines' seeded
forward noising) also define ``invert`` and say so through ``takes_inversion``. The registry in
:mod:`locedit.methods` lists them; the pipeline, the CLI, the bench and ``locedit methods`` read
it, so adding a method is one module and one registry line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

from ..errors import LoceditError
from ..options import Citation  # noqa: F401  (re-exported to the method modules)
from ..registry import Entry

if TYPE_CHECKING:  # the registry stays light: no torch until a method runs
    import torch

    from ..attention import AttentionController
    from ..masks import Region

# the command-line flags that give each input
INPUT_FLAGS = {"mask": "--mask/--box/--mask-from", "blend_words": "--blend-words", "regions": "--region",
               "attributes": "--attribute", "pairs": "--bind"}

# what a request can carry; a method's ``uses`` is a subset
INPUTS = {
    "mask": "a user mask of the region to edit (--mask / --box)",
    "blend_words": "P2P local blend words, a source word and a target word (--blend-words)",
    "regions": "target-prompt words tied to masks (--region WORD=MASK)",
    "attributes": "attribute words tied to masks (--attribute WORD=MASK)",
    "source_regions": "source-prompt nouns tied to priors (--region NOUN=MASK)",
    "pairs": "adjective-noun bindings (--bind ADJ:NOUN)",
    "inversion": "any inversion from the registry (--inversion)",
}

BRANCHES = ("source", "target")


@dataclass(frozen=True)
class EditRequest:
    """Everything an edit is asked to do, at the model's size. Masks are (1, 1, S, S) in [0, 1]."""

    source: str
    target: str
    mask: torch.Tensor | None = None
    blend_words: tuple[str, str] | None = None
    regions: tuple[Region, ...] = ()
    attributes: tuple[Region, ...] = ()
    pairs: tuple[tuple[str, str], ...] = ()
    num_steps: int = 50
    guidance: float = 7.5
    seed: int = 0  # the noise of methods that draw it (SDEdit, Blended Latent Diffusion)
    # the unconditional rule of the trajectory the edit runs on (Trajectory.uncond): "null" (the
    # empty prompt's embedding), "learned" (null-text) or "source" (NPI), known before inverting;
    # None for a method that makes its own trajectory
    uncond: str | None = "null"

    def given(self) -> set[str]:
        """The inputs this request sets (as named in :data:`INPUTS`; regions of a method that takes
        source-prompt nouns are reported as "regions" too and checked by the method)."""
        out = set()
        if self.mask is not None:
            out.add("mask")
        if self.blend_words is not None:
            out.add("blend_words")
        if self.regions:
            out.add("regions")
        if self.attributes:
            out.add("attributes")
        if self.pairs:
            out.add("pairs")
        return out


@dataclass
class Plan:
    """What :func:`locedit.pipeline.sample` installs and how it runs the loop.

    ``controller``: attention processors for the whole loop, restored after it; ``subscribers``:
    the method's subscribers to the loop's per-step events (:mod:`locedit.events`: latent guidance,
    blends, source pinning, DiffEdit's mask); ``branches``: the prompts sampled, a subset of
    ("source", "target") in that order (the noise-based baselines sample the target alone);
    ``first_step``: sampling starts at this step from the trajectory's latent at that noise level
    (SDEdit's strength, Blended Latent Diffusion's skipped steps); ``prompts``: branch -> prompt
    where a branch is not sampled on its own prompt (Plug-and-Play's source row on the empty
    prompt); ``null_prompt``: the prompt of the "null" unconditional embedding (Plug-and-Play's
    negative prompt)."""

    controller: AttentionController | None
    subscribers: tuple = ()
    info: dict = field(default_factory=dict)
    branches: tuple[str, ...] = BRANCHES
    first_step: int = 0
    prompts: dict[str, str] = field(default_factory=dict)
    null_prompt: str = ""

    def __post_init__(self):
        if not self.branches or tuple(b for b in BRANCHES if b in self.branches) != tuple(self.branches):
            raise ValueError(f"branches must be an ordered subset of {BRANCHES}, got {self.branches}")
        if "target" not in self.branches:
            raise ValueError("an edit plan samples the target branch")


def check_grad_checkpointing(method, options, inversion: str | None, saved: bool) -> None:
    """--grad-checkpointing acts only where the UNet takes gradients: in the method (latent guidance,
    token learning) or in the inversion it runs (``inversion``: its name, None when the method makes its
    own; ``saved``: a saved trajectory, whose inversion has run). Model-free: checked before any load."""
    from ..inversion import INVERSIONS

    inverts_with_grads = (not saved and inversion is not None and method.takes_inversion(options)
                          and getattr(INVERSIONS[inversion].Options, "TAKES_GRADIENTS", False))
    if not (method.takes_gradients or inverts_with_grads):
        what = "the saved trajectory" if saved else f"--inversion {inversion}"
        raise LoceditError(f"--grad-checkpointing has no effect here: neither --method {method.name} nor {what} "
                           "takes gradients through the UNet")


class Method(Entry):
    """Base of every editing method (see the module docstring); the registries' fields come from
    :class:`locedit.registry.Entry`."""

    needs: ClassVar[frozenset[str]] = frozenset()  # inputs of ``uses`` it cannot run without (the bench gives them)
    missing: ClassVar[str] = ""  # the refusal when one of ``needs`` is absent (default: names the flag)
    families: ClassVar[tuple[str, ...]] = ("sd", "sdxl")  # model families it runs on (ModelBundle.family)
    # the inversion its paper uses, run when none is named (a method that takes one)
    inversion: ClassVar[str] = "null-text"
    takes_gradients: ClassVar[bool] = False  # backpropagates through the UNet (what --grad-checkpointing acts on)

    @classmethod
    def check(cls, bundle, request: EditRequest, options) -> None:
        """Every validation that can fail, before any UNet call (:meth:`check_text`'s among them)."""
        cls.check_text(bundle, request, options)

    @classmethod
    def check_text(cls, text, request: EditRequest, options) -> None:
        """The checks that need the prompts and the tokenizer alone: ``text`` is the bundle, or a
        :class:`~locedit.diffusion.textside.TextSide` when :func:`locedit.api.edit` runs them before
        the model is loaded (so a request whose masks are not read yet: only words and options)."""
        text.token_ids(request.source)
        text.token_ids(request.target)

    @classmethod
    def build(cls, bundle, request: EditRequest, options) -> Plan:
        raise NotImplementedError

    @classmethod
    def takes_inversion(cls, options) -> bool:
        """True: the edit runs on an inversion from the registry (``--inversion``, or a saved
        trajectory); False: :meth:`invert` makes the trajectory. Most methods decide by their
        ``uses``; one whose options choose (Blended Latent Diffusion's noise) overrides this."""
        return "inversion" in cls.uses

    @classmethod
    def invert(cls, bundle, image: torch.Tensor, request: EditRequest, options, progress=None):
        raise LoceditError(f"method {cls.name!r} has no inversion of its own")

    @classmethod
    def unused(cls, given: set[str]) -> list[str]:
        """The inputs of ``given`` (names of :data:`INPUTS`) this method would ignore; source-prompt
        nouns come as "regions" too."""
        return sorted(given - cls.uses - ({"regions"} if "source_regions" in cls.uses else set()))

    @classmethod
    def check_inputs(cls, request: EditRequest) -> None:
        """Refuse inputs this method would ignore (no flag is accepted and then ignored), and the
        absence of one it cannot run without."""
        cls.check_given(request.given())

    @classmethod
    def check_given(cls, given: set[str]) -> None:
        """:meth:`check_inputs` by the inputs' names alone (the spec's check runs it before any file
        is read): unused inputs refused, then a missing one of :attr:`needs`."""
        cls.refuse_unused(given)
        for name in sorted(cls.needs - given):
            raise LoceditError(cls.missing or f"{cls.name} needs {INPUT_FLAGS[name]}")

    @classmethod
    def refuse_unused(cls, given: set[str]) -> None:
        """Refuse the inputs of ``given`` (names of :data:`INPUTS`) this method would ignore."""
        for name in cls.unused(given):
            raise LoceditError(f"{INPUT_FLAGS[name]} is not used by --method {cls.name}")
