"""``locedit methods``: every editing method, inversion and flow editor, with its inputs, options, defaults,
the two presets' differences, and its papers and equations, read from the registries."""

from __future__ import annotations

import argparse

from .common import add_output_flags


def register(sub) -> None:
    p = sub.add_parser("methods", help="list the editing methods and inversions with their options and papers",
                       description="Every method and inversion in the registries: the inputs it uses, its options "
                                   "(flag, default, and the values of the 'paper' and 'official' presets where they "
                                   "differ), its paper and equations, and its authors' code.",
                       epilog="example: locedit methods --json | python -m json.tool",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_output_flags(p)
    p.set_defaults(run=cmd_methods, prints_itself=True)


def _options_table(cls) -> list[dict]:
    from ..options import flag_fields, preset

    paper, official = preset(cls, "paper"), preset(cls, "official")
    rows = []
    for f in flag_fields(cls):
        row = {"option": ".".join(f.path), "flag": f"--{f.flag}",
               "default": f.meta.get("default_text", f.default) if f.default is None else f.default,
               "help": f.meta.get("help", "")}
        pv, ov = _get(paper, f.path), _get(official, f.path)
        if pv != f.default:
            row["paper"] = pv
        if ov != f.default:
            row["official"] = ov
        rows.append(row)
    return rows


def _get(obj, path):
    for name in path:
        obj = getattr(obj, name)
    return obj


def describe_entry(entry, note: str = "") -> dict:
    """One registry entry (:class:`locedit.registry.Entry`) as ``locedit methods`` shows it."""
    from ..methods import INPUTS
    from ..options import describe, differences, preset

    paper, official = preset(entry.Options, "paper"), preset(entry.Options, "official")
    return {
        "summary": entry.summary + note,
        "inputs": {k: INPUTS[k] for k in sorted(entry.uses)},
        "papers": [c.__dict__ for c in entry.papers],
        "built_on": list(entry.built_on),
        "options": _options_table(entry.Options),
        "defaults": describe(entry.Options()),
        "official_differs": {k: list(v) for k, v in differences(paper, official).items()},
    }


def describe_registries() -> dict:
    from ..instruct import INSTRUCT_METHODS
    from ..inversion import INVERSIONS
    from ..methods import METHODS

    from ..flow import FLOW_EDITORS

    methods = {name: describe_entry(m) for name, m in METHODS.items()}
    methods.update({name: describe_entry(m, " (locedit instruct)") for name, m in INSTRUCT_METHODS.items()})
    flow = {name: {**describe_entry(e, " (locedit edit, on FLUX or SD3)"), "families": list(e.families), "needs_mask": e.needs_mask}
            for name, e in FLOW_EDITORS.items()}
    from ..flow.inversions import FLOW_INVERSIONS

    flow_inv = {name: {**describe_entry(e, " (locedit invert)"), "families": list(e.families),
                       "needs_mask": False} for name, e in FLOW_INVERSIONS.items()}
    return {"methods": methods, "inversions": {name: describe_entry(inv) for name, inv in INVERSIONS.items()},
            "flow_editors": flow, "flow_inversions": flow_inv}


def cmd_methods(args) -> dict:
    import json

    info = describe_registries()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return {"out": "-"}
    lines = []
    for kind in ("methods", "inversions", "flow_editors", "flow_inversions"):
        lines.append(f"{kind}:")
        for name, d in info[kind].items():
            lines.append(f"  {name}" + (f": {d['summary']}" if d.get("summary") else ""))
            for c in d["papers"]:
                lines.append(f"      paper: {c['paper']}; {c['equations']}; code: {c['code']}")
            if d.get("built_on"):
                lines.append(f"      built on: {', '.join(d['built_on'])} (papers listed there)")
            if d.get("inputs"):
                lines.append(f"      inputs: {', '.join(d['inputs'])}")
            if d.get("families"):
                lines.append(f"      models: {', '.join(d['families'])}" + ("; needs --mask" if d["needs_mask"] else ""))
            for row in d["options"]:
                extra = "".join(f", {k} {row[k]}" for k in ("paper", "official") if k in row)
                lines.append(f"      {row['flag']:<20} default {row['default']}{extra}")
    print("\n".join(lines))
    return {"out": "-"}
