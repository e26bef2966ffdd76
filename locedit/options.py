"""Options dataclasses: presets and command-line fields, as data.

Every method and inversion has one frozen options dataclass. Two readings of a method exist where
its paper and its authors' code differ; a class lists them in ``PRESETS`` (a class attribute, not
a field): ``{"paper": {field: value}, "official": {field: value}}``, where a value for a nested
options field is itself such a dict. The dataclass defaults are the paper's reading where the
paper is explicit and the code's where only the code is (``docs/conformance.md``), so
``preset(cls, "paper")`` usually equals ``cls()``.

A field becomes a command-line flag when its ``metadata`` has ``"flag"`` (the flag's name without
dashes) and optionally ``"help"``, ``"choices"``, ``"nargs"``, ``"type"`` (a parser) and
``"repeat"`` (the flag may be given several times, collected into a tuple).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from .errors import LoceditError

PRESET_NAMES = ("paper", "official")


@dataclasses.dataclass(frozen=True)
class Citation:
    """Where a method or inversion comes from."""

    paper: str  # authors, title, venue
    equations: str  # the equations / algorithm implemented
    code: str  # the authors' repository and file


def presets_of(cls) -> dict[str, dict]:
    return dict(getattr(cls, "PRESETS", {}) or {})


def apply_preset(options, name: str):
    """``options`` with the preset ``name`` applied to it and, recursively, to its nested options."""
    if name not in PRESET_NAMES:
        raise ValueError(f"preset must be one of {', '.join(PRESET_NAMES)}, got {name!r}")
    table = presets_of(type(options)).get(name, {})
    changes = {}
    for f in dataclasses.fields(options):
        value = getattr(options, f.name)
        if dataclasses.is_dataclass(value):
            nested = apply_preset(value, name)
            override = table.get(f.name)
            if isinstance(override, dict):
                nested = dataclasses.replace(nested, **override)
            elif override is not None:
                nested = override
            changes[f.name] = nested
        elif f.name in table:
            changes[f.name] = table[f.name]
    return dataclasses.replace(options, **changes)


def preset(cls, name: str | None = None, **overrides):
    """An instance of ``cls`` with the preset applied (None: the defaults), then ``overrides``."""
    options = cls()
    if name is not None:
        options = apply_preset(options, name)
    return replace_path(options, overrides) if overrides else options


@dataclasses.dataclass(frozen=True)
class FlagField:
    """One command-line flag of an options class: where its value goes and how it is parsed."""

    path: tuple[str, ...]  # field names from the top options object down to the leaf
    flag: str  # without dashes
    default: Any
    meta: dict

    @property
    def dest(self) -> str:
        return "opt_" + self.flag.replace("-", "_")


def flag_fields(cls_or_options, prefix: tuple[str, ...] = (), flag_prefix: str = "") -> Iterator[FlagField]:
    """The flags of an options class, nested options included (depth first, in field order). A
    nested options field may carry ``"flag_prefix"`` in its metadata (e.g. "localize-"), put before
    every flag inside it."""
    obj = cls_or_options if not isinstance(cls_or_options, type) else cls_or_options()
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from flag_fields(value, prefix + (f.name,), flag_prefix + f.metadata.get("flag_prefix", ""))
        elif "flag" in f.metadata:
            meta = dict(f.metadata)
            meta["aliases"] = tuple(flag_prefix + a for a in meta.get("aliases", ()))
            yield FlagField(prefix + (f.name,), flag_prefix + f.metadata["flag"], value, meta)


def replace_path(options, values: dict):
    """``options`` with leaf fields replaced: ``values`` maps a field path (tuple, or a dotted string)
    to the new value."""
    grouped: dict[str, Any] = {}
    nested: dict[str, dict] = {}
    for path, value in values.items():
        path = tuple(path.split(".")) if isinstance(path, str) else tuple(path)
        if len(path) == 1:
            grouped[path[0]] = value
        else:
            nested.setdefault(path[0], {})[path[1:]] = value
    for name, sub in nested.items():
        grouped[name] = replace_path(getattr(options, name), sub)
    return dataclasses.replace(options, **grouped)


def describe(options) -> dict:
    """Options as plain data (for JSON, PNG metadata and ``locedit methods``)."""
    return dataclasses.asdict(options)


def differences(a, b, prefix: str = "") -> dict[str, tuple]:
    """{dotted field: (a's value, b's value)} where two options objects of one class differ."""
    out = {}
    for f in dataclasses.fields(a):
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if dataclasses.is_dataclass(va):
            out.update(differences(va, vb, f"{prefix}{f.name}."))
        elif va != vb:
            out[prefix + f.name] = (va, vb)
    return out


def options_from_texts(cls, preset_name: str | None, texts: dict[str, str]):
    """``preset(cls, preset_name)`` with the flags of ``texts`` ({flag without dashes: text}, e.g. from a
    web form) parsed and applied as the command line would: numbers checked finite, choices checked,
    booleans "on"/"off", repeated flags space-separated. Blank texts are skipped; a flag the class does
    not have, or a value it refuses, is a one-line :class:`locedit.errors.LoceditError`."""
    import math

    fields = {f.flag: f for f in flag_fields(cls)}
    changes = {}
    for flag, text in texts.items():
        text = str(text or "").strip()
        if not text:
            continue
        if flag not in fields:
            raise LoceditError(f"--{flag} is not an option of {cls.__name__}")
        f = fields[flag]
        parse = f.meta.get("type", str)
        try:
            if isinstance(f.default, bool):
                if text.lower() not in ("on", "off", "true", "false", "yes", "no"):
                    raise ValueError(f"{text!r} is not on or off")
                value = text.lower() in ("on", "true", "yes")
            elif f.meta.get("repeat"):
                value = tuple(parse(v) for v in text.split())
            else:
                value = parse(text)
                if "choices" in f.meta and value not in f.meta["choices"]:
                    raise ValueError(f"{text!r} is not one of {', '.join(map(str, f.meta['choices']))}")
                if isinstance(value, float) and not math.isfinite(value):
                    raise ValueError(f"{text} is not a finite number")
        except (TypeError, ValueError) as exc:
            raise LoceditError(f"argument --{flag}: {exc}") from None
        changes[f.path] = value
    try:
        return replace_path(preset(cls, preset_name), changes) if changes else preset(cls, preset_name)
    except (TypeError, ValueError) as exc:
        raise LoceditError(str(exc)) from None


@dataclasses.dataclass(frozen=True)
class EditOptions:
    """Sampling-side options shared by every engine.

    The last three are the editing-side extras the SPDInv authors' P2P code uses and the paper does
    not mention; each is off by default so its effect can be measured apart from the inversion:
    ``npi_null``: the source prompt's embedding replaces the null embedding (as NPI);
    ``proximal_quantile``: soft-threshold the guidance difference eps_c - eps_u at this quantile of
    its magnitude (their "l0" proximal guidance, 0.7);
    ``inversion_guidance_t``: for timesteps below this (400), latents where the thresholded guidance
    is zero (3x3-dilated complement) are pulled onto the inversion trajectory (needs the proximal
    threshold).
    """

    guidance: float = 7.5
    npi_null: bool = False
    proximal_quantile: float | None = None
    inversion_guidance_t: int | None = None
    # recompute UNet activations in every backward pass of the edit (inversion searches, token
    # learning, latent guidance): less memory, about one more forward per backward
    grad_checkpointing: bool = False

    def __post_init__(self):
        import math

        if not math.isfinite(self.guidance) or self.guidance < 0:
            raise LoceditError(f"guidance must be a finite number >= 0, got {self.guidance}")
        if self.proximal_quantile is not None and not 0.0 < self.proximal_quantile < 1.0:
            raise LoceditError(f"proximal_quantile must be in (0, 1), got {self.proximal_quantile}")
        if self.inversion_guidance_t is not None and self.proximal_quantile is None:
            raise LoceditError("inversion guidance needs the proximal threshold (set proximal_quantile)")
