"""``locedit methods``: every editing method and inversion, with its inputs, options, defaults,
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


def describe_registries() -> dict:
    from ..inversion import INVERSION_PAPERS, INVERSIONS
    from ..methods import INPUTS, METHODS
    from ..options import describe, differences, preset

    methods = {}
    for name, m in METHODS.items():
        paper, official = preset(m.Options, "paper"), preset(m.Options, "official")
        methods[name] = {
            "summary": m.summary,
            "inputs": {k: INPUTS[k] for k in sorted(m.uses)},
            "papers": [c.__dict__ for c in m.papers],
            "options": _options_table(m.Options),
            "defaults": describe(m.Options()),
            "official_differs": {k: list(v) for k, v in differences(paper, official).items()},
        }
    from ..instruct import INSTRUCT_METHODS

    for name, m in INSTRUCT_METHODS.items():
        paper, official = preset(m.Options, "paper"), preset(m.Options, "official")
        methods[name] = {
            "summary": m.summary + " (locedit instruct)",
            "inputs": {k: INPUTS[k] for k in sorted(m.uses)},
            "papers": [c.__dict__ for c in m.papers],
            "options": _options_table(m.Options),
            "defaults": describe(m.Options()),
            "official_differs": {k: list(v) for k, v in differences(paper, official).items()},
        }
    inversions = {}
    for name, (cls, _) in INVERSIONS.items():
        paper, official = preset(cls, "paper"), preset(cls, "official")
        inversions[name] = {"papers": [c.__dict__ for c in INVERSION_PAPERS.get(name, ())],
                            "options": _options_table(cls), "defaults": describe(cls()),
                            "official_differs": {k: list(v) for k, v in differences(paper, official).items()}}
    return {"methods": methods, "inversions": inversions}


def cmd_methods(args) -> dict:
    import json

    info = describe_registries()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return {"out": "-"}
    lines = []
    for kind in ("methods", "inversions"):
        lines.append(f"{kind}:")
        for name, d in info[kind].items():
            lines.append(f"  {name}" + (f": {d['summary']}" if d.get("summary") else ""))
            for c in d["papers"]:
                lines.append(f"      paper: {c['paper']}; {c['equations']}; code: {c['code']}")
            if d.get("inputs"):
                lines.append(f"      inputs: {', '.join(d['inputs'])}")
            for row in d["options"]:
                extra = "".join(f", {k} {row[k]}" for k in ("paper", "official") if k in row)
                lines.append(f"      {row['flag']:<20} default {row['default']}{extra}")
    print("\n".join(lines))
    return {"out": "-"}
