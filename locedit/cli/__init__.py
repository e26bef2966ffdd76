"""Command line: ``locedit edit|invert|instruct|flow|bench|report|world|methods|ui``.

The edge of the package: files, PIL images, flags, progress bars and exit codes live here, one
module per subcommand. Errors the user can fix exit with code 2 and one ``error: ...`` line on
stderr; no output file is left behind (outputs are written to a temporary name and renamed at the
end).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from ..fileio import load_image, load_mask, save_png  # noqa: F401  (public: the README's Python example)
from .common import EXIT_USAGE, Parser

SUBCOMMANDS = ("edit", "instruct", "flow", "bench", "world", "methods", "ui")  # modules; edit also registers invert, bench report


def build_parser() -> Parser:
    import importlib

    from .. import __version__

    parser = Parser(prog="locedit", description="Localized text-guided editing of real images with diffusion models.")
    parser.add_argument("--version", action="version", version=f"locedit {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name in SUBCOMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def _expand_spec(argv: list[str]) -> list[str]:
    """Insert the options of an ``--spec FILE`` (JSON, or YAML with PyYAML) that the command line
    does not give itself."""
    from ..errors import LoceditError

    if "--spec" not in argv:
        return argv
    i = argv.index("--spec")
    if i + 1 >= len(argv):
        raise LoceditError("--spec needs a file")
    path = argv[i + 1]
    try:
        text = Path(path).read_text()
    except OSError:
        raise LoceditError(f"spec file {path!r} cannot be read") from None
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml

            spec = yaml.safe_load(text)
        else:
            spec = json.loads(text)
    except ImportError:
        raise LoceditError("YAML spec files need PyYAML (pip install pyyaml); or use JSON") from None
    except Exception as exc:
        raise LoceditError(f"spec file {path!r} is not valid: {str(exc).splitlines()[0]}") from None
    if not isinstance(spec, dict):
        raise LoceditError(f"spec file {path!r} must hold an object of options")
    extra: list[str] = []
    positional = []
    for key, value in spec.items():
        if key == "image":
            if not any(not a.startswith("-") for a in argv[1:i]):
                positional.append(str(value))
            continue
        flag = "--" + key.replace("_", "-")
        if flag in argv:
            continue
        values = value if isinstance(value, list) else [value]
        if value is True:
            extra.append(flag)
        elif value is False or value is None:
            continue
        elif key in ("blend_words", "blend-words"):
            extra += [flag] + [str(v) for v in values]
        else:
            for v in values:
                extra += [flag, str(v)]
    rest = argv[1:i] + argv[i + 2 :]
    return [argv[0]] + positional + rest + extra


def main(argv: list[str] | None = None) -> int:
    from ..errors import LoceditError

    try:
        argv = _expand_spec(list(sys.argv[1:] if argv is None else argv))
    except LoceditError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_USAGE
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (exit 2, one line) and --help (exit 0)
        return int(exc.code or 0)
    t0 = time.perf_counter()
    try:
        summary = args.run(args)
    except LoceditError as exc:
        if getattr(args, "debug", False):
            raise
        sys.stderr.write(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except Exception as exc:  # a bug, or the machine (out of memory, a full disk): one line, --debug for more
        if getattr(args, "debug", False):
            raise
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        kind = "cannot write or read a file" if isinstance(exc, OSError) else "internal error"
        sys.stderr.write(f"error: {kind}: {type(exc).__name__}: {first[:200]} (run again with --debug for the "
                         "traceback)\n")
        return 1
    if getattr(args, "prints_itself", False):
        return 0
    summary["total_seconds"] = round(time.perf_counter() - t0, 3)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        sys.stderr.write(f"wrote {summary['out']}\n")
    return 0
