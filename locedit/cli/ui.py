"""``locedit ui``: the web app (Gradio) on the loaded model."""

from __future__ import annotations

import argparse
import sys

from ..errors import LoceditError
from .common import add_image_limit_flags


def register(sub) -> None:
    p = sub.add_parser("ui", help="start the web app: upload, brush a mask, edit, compare methods",
                       description="A local web page for localized editing on one model: draw the mask, pick the "
                                   "method and inversion from the registries, edit, compare methods on one inversion, "
                                   "and copy the `locedit edit` command that reproduces each result (docs/ui.md).",
                       epilog="example: locedit ui --model shapes   (then open http://127.0.0.1:7860)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="shapes", help="model folder, hub id or built-in name (default shapes)")
    p.add_argument("--instruct-model", default="shapes-instruct",
                   help="InstructPix2Pix model for ip2p and lime, loaded on first use (default shapes-instruct; "
                        "'none': offer the editing methods only)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"], help="network precision (default fp32)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; anything else is reachable from "
                        "the network and prints a warning)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    add_image_limit_flags(p)
    p.set_defaults(run=cmd_ui, prints_itself=True, json=False)


def cmd_ui(args) -> dict:
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise LoceditError("locedit ui needs Gradio: pip install 'locedit[ui]' (or pip install gradio)") from None
    from ..diffusion import load_model
    from ..ui.app import AppConfig, Session
    from ..ui.page import launch
    from .common import quiet_libraries

    if not 0 < args.port < 65536:
        raise LoceditError(f"--port {args.port} is not a port number")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        sys.stderr.write(f"warning: --host {args.host} makes the app reachable from other machines; it has no login\n")
    quiet_libraries(False)
    config = AppConfig(model=args.model, instruct_model=None if args.instruct_model == "none" else args.instruct_model,
                       device=args.device, dtype=args.dtype, max_pixels=args.max_image_pixels,
                       max_bytes=int(args.max_image_mb * 2**20))
    bundle = load_model(args.model, args.device, args.dtype)
    try:
        launch(Session(config, bundle), args.host, args.port)
    except OSError as exc:  # the port is taken, or the address cannot be bound
        raise LoceditError(f"cannot serve on {args.host}:{args.port}: {str(exc).splitlines()[0][:160]}") from None
    return {}
