"""The Gradio page of ``locedit ui`` (layout and event wiring; the work is :class:`locedit.ui.app.Session`)."""

from __future__ import annotations

import os

import numpy as np

from .app import EXAMPLE, EXAMPLE_SOURCE, EXAMPLE_TARGET, PRESETS, EditInputs, Session, comparison_grid, \
    layer_masks, method_names, option_fields

HELP = """**locedit**: localized text-guided editing. Upload an image (or load the example), describe it
(source) and the edit (target), brush over the region to edit (each layer is one mask; give region
words in layer order for MAG-Edit, MDE-Edit and LocInv), pick a method and an inversion, and press
**Edit**. The inversion is kept for this session: changing only the target, the method or its
options re-runs only the edit. Every result comes with the `locedit edit` command that reproduces it."""


def _display(a):
    """Small images shown at 4x-8x by pixel repetition (the shapes model's 64 px would be a thumbnail)."""
    if a is None:
        return None
    k = max(1, 256 // a.shape[0])
    return np.repeat(np.repeat(a, k, axis=0), k, axis=1) if k > 1 else a


def _error(exc) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"**error:** {text}"


def _option_panels(gr, methods, inversions):
    """One accordion of option fields per method and inversion (only the chosen ones visible):
    ((kind, name, flag) of each field in order, the fields' components, (kind, name) -> accordion)."""
    option_keys, option_boxes, panels = [], [], {}
    for kind, names in (("method", methods), ("inversion", inversions)):
        for name in names:
            fields = option_fields(kind, name)
            visible = name == ("p2p" if kind == "method" else "direct")
            with gr.Accordion(f"{name} options", open=False, visible=visible) as acc:
                if not fields:
                    gr.Markdown("no options")
                for f in fields:
                    default = f.meta.get("default_text", f.default)
                    info = f"{f.meta.get('help', '')} (default: {default})"
                    if isinstance(f.default, bool):
                        box = gr.Dropdown(["", "on", "off"], value="", label=f"--{f.flag}", info=info)
                    elif "choices" in f.meta:
                        box = gr.Dropdown([""] + list(f.meta["choices"]), value="", label=f"--{f.flag}", info=info)
                    else:
                        box = gr.Textbox(value="", label=f"--{f.flag}", info=info, placeholder=str(default))
                    option_keys.append((kind, name, f.flag))
                    option_boxes.append(box)
            panels[(kind, name)] = acc
    return option_keys, option_boxes, panels


def _inputs_of(session: Session, option_keys, values) -> EditInputs:
    """The page's component values (in the order of ``build``'s ``common``) as one edit's inputs;
    only the chosen method's and inversion's option fields count."""
    (editor_v, source_v, target_v, instruction_v, method_v, inversion_v, preset_v, steps_v, guidance_v, seed_v,
     regions_v, attributes_v, boxes_v, blend_v, attention_v, *opts) = values
    background = (editor_v or {}).get("background")
    image = session.check_image(None if background is None else np.asarray(background)[..., :3]
                                if np.asarray(background).ndim == 3 else None)
    options = {}
    for (kind, name, flag), value in zip(option_keys, opts):
        active = name == (method_v if kind == "method" else inversion_v)
        if active and value not in (None, ""):
            options[flag] = str(value)
    return EditInputs(image=image, source=source_v or "", target=target_v or "", method=method_v,
                      instruction=instruction_v or "",
                      inversion=inversion_v, steps=int(steps_v or 50), guidance=float(guidance_v or 0),
                      seed=int(seed_v or 0), preset=preset_v, masks=layer_masks(editor_v, image.shape[:2]),
                      region_words=regions_v or "", attribute_words=attributes_v or "", boxes=boxes_v or "",
                      blend_words=blend_v or "", options=options, attention_words=attention_v or "")


def _example_value():
    """The editor, prompts and upload message when the shapes example is loaded."""
    from PIL import Image

    rgba = np.asarray(Image.open(EXAMPLE).convert("RGBA"))
    return ({"background": rgba, "layers": [], "composite": rgba}, EXAMPLE_SOURCE, EXAMPLE_TARGET, "")


def checked_editor(gr, session: Session, **kwargs):
    """A gr.ImageEditor whose files are checked by their header, as the file picker's, before Gradio
    decodes them (it decodes every upload when an event reads the editor: a 12000x12000 PNG cost 53 s
    and 1.6 GiB before locedit saw it, a 20000x20000 one ended in PIL's decompression error and a
    server traceback, a text file in Gradio's own error). A refused file is one readable message.

    The check is this instance's ``convert_and_format_image`` (the method Gradio's preprocess calls
    for each file), not a subclass: Gradio writes a ``.pyi`` stub beside the source of every component
    class it sees defined, which would write into the installed package."""
    import types

    from ..errors import LoceditError
    from ..fileio import header_size

    editor = gr.ImageEditor(**kwargs)
    decode = editor.convert_and_format_image

    def convert_and_format_image(self, file, flatten_on_white: bool = False):
        if file is not None and not isinstance(file, (bytes, bytearray, memoryview)):
            name = os.path.basename(str(getattr(file, "orig_name", None) or "the image"))
            try:
                session.check_size(*header_size(file.path, "image", max_pixels=1 << 62,
                                                max_bytes=session.config.max_bytes))
            except LoceditError as exc:  # the server's cache path is not shown, only the file's name
                raise gr.Error(str(exc).replace(str(file.path), name), print_exception=False) from None
        return decode(file, flatten_on_white)

    editor.convert_and_format_image = types.MethodType(convert_and_format_image, editor)
    return editor


def _choice_handler(gr, panels):
    """The option panel of the chosen method and inversion shown, the others hidden."""
    def on_choice(method_v, inversion_v):
        return [gr.update(visible=(name == (method_v if kind == "method" else inversion_v))) for (kind, name) in panels]

    return on_choice


def _file_handler(session: Session, gr):
    def on_file(path):
        """An uploaded file (Gradio's own temporary copy) decoded by locedit's checked reader."""
        from ..errors import LoceditError
        from ..fileio import load_image

        if not path:
            return gr.update(), "", gr.update()
        try:
            x = load_image(path, max_pixels=session.config.max_pixels, max_bytes=session.config.max_bytes)
            rgb = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            session.check_image(rgb)
        except LoceditError as exc:  # the server's temporary path is not shown, only the file's name
            return gr.update(), _error(str(exc).replace(str(path), os.path.basename(str(path)))), None
        rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=-1)
        return {"background": rgba, "layers": [], "composite": rgba}, "", None  # the picker empties again

    return on_file


def progress_adapter(progress, label: str = ""):
    """locedit's progress interface on a Gradio progress display, each bar named by its stage (and by
    ``label``, the method a comparison is on)."""
    stages = {"editing": "edit", "sampling": "edit"}

    def track(iterable, desc):
        stage = stages.get(desc, "inversion" if "inversion" in desc else desc)
        return progress.tqdm(iterable, desc=f"{label}{stage}: {desc}")

    return track


def _edit_handlers(session: Session, gr, inputs_of):
    """(on_edit, on_compare): one edit, or the chosen methods on one inversion, with the page's
    progress; a refused input shows its one line, anything else an internal-error line."""
    from ..errors import LoceditError

    def on_edit(state, *values, progress=gr.Progress()):
        state = state if isinstance(state, dict) else {}
        try:
            inputs = inputs_of(values)
            out = session.edit(inputs, state, progress_adapter(progress))
        except LoceditError as exc:  # the previous result is cleared: nothing stale stays shown as if current
            return (state, _error(exc), None, None, None, "", None)
        except Exception as exc:  # noqa: BLE001 - the page stays usable; the server log has the rest
            return (state, _error(f"internal error: {type(exc).__name__}: {exc}"), None, None, None, "", None)
        reused = " (inversion reused)" if out.summary.get("inversion_reused") else ""
        note = f"done in {out.summary.get('edit_seconds', 0):.1f} s{reused}"
        if not inputs.masks and not inputs.boxes.strip():  # what the page sent is what the user is told
            note += "; no mask was drawn: the edit is not limited to a region you chose"
        return (state, note, _display(out.panel), _display(out.edited), _display(out.attention), out.command,
                out.png)

    def on_compare(state, chosen, *values, progress=gr.Progress()):
        state = state if isinstance(state, dict) else {}
        try:
            base = inputs_of(values)
            if not chosen:
                raise LoceditError("choose the methods to compare")
            tiles = [("source", base.image)]
            for name in chosen:
                one = EditInputs(**{**base.__dict__, "method": name, "options": {}, "attention_words": ""})
                tiles.append((name, session.edit(one, state, progress_adapter(progress, f"{name}: ")).edited))
        except LoceditError as exc:
            return state, _error(exc), gr.update()
        return state, f"compared {', '.join(chosen)} on one inversion", comparison_grid(tiles)

    return on_edit, on_compare


def _compare_row(gr, methods: list[str]):
    """The methods to compare and the button: the UNet methods, or on a FLUX or SD3 model its flow
    editors (``methods`` has no p2p there)."""
    from ..methods import METHODS

    flow = "p2p" not in methods
    comparable = methods if flow else list(METHODS)
    with gr.Row():
        chosen = gr.CheckboxGroup(comparable, value=comparable[:2] if flow else ["p2p", "masactrl"],
                                  label="compare methods")
        button = gr.Button("Compare on the same inversion", elem_id="compare")
    return chosen, button


def build(session: Session):
    """The page: the image, its masks and the settings on the left; the prompts, the Edit button with its
    status right under it, and the results on the right, wired to the session."""
    import gradio as gr

    from ..inversion import INVERSIONS
    from ..methods import METHODS

    methods, inversions = method_names(session.config, session.bundle), list(INVERSIONS)

    with gr.Blocks(title="locedit") as demo:
        cache = gr.State(None)
        gr.Markdown(HELP)
        with gr.Row():
            with gr.Column(scale=1):  # the image, its masks and the settings
                editor = checked_editor(gr, session,
                                        label="image and mask layers (brush over the region to edit)", type="numpy",
                                        image_mode="RGBA", sources=["upload"], layers=True, elem_id="editor",
                                        # translucent, so a red object stays visible under its mask
                                        brush=gr.Brush(colors=[("#ff3030", 0.5)], default_color=("#ff3030", 0.5),
                                                       color_mode="fixed", default_size=6),
                                        canvas_size=(512, 512), transforms=())
                example = gr.Button("Load the shapes example", elem_id="example")
                upload_file = gr.File(label="or open an image file (checked for format, bytes and pixels before "
                                            "it reaches the editor)", file_types=["image"], type="filepath",
                                      elem_id="file")
                upload_error = gr.Markdown(elem_id="upload-error")
                with gr.Row():
                    steps = gr.Number(value=50, precision=0, minimum=1, maximum=1000, label="steps", elem_id="steps")
                    guidance = gr.Number(value=7.5, label="guidance")
                    seed = gr.Number(value=0, precision=0, minimum=0, label="seed")
                with gr.Accordion("regions, boxes, blend words, attention", open=False):
                    region_words = gr.Textbox(label="region words, one per mask layer in order (MAG-Edit, MDE-Edit, LocInv)")
                    attribute_words = gr.Textbox(label="attribute words, one per mask layer (MDE-Edit)")
                    boxes = gr.Textbox(label="boxes in image pixels: x0,y0,x1,y1 (several: space-separated)")
                    blend_words = gr.Textbox(label="P2P local blend words: SOURCE_WORD TARGET_WORD")
                    attention_words = gr.Textbox(label="show the attention maps of these target words")
                option_keys, option_boxes, panels = _option_panels(gr, methods, inversions)
                compare_methods, compare = _compare_row(gr, methods)
            with gr.Column(scale=1):  # the edit asked for, the button, its status right under it, the results
                source = gr.Textbox(label="source prompt (describes the image)", elem_id="source")
                target = gr.Textbox(label="target prompt (the edit)", elem_id="target")
                instruction = gr.Textbox(label="instruction (ip2p and lime, on the instruct model: 'make the circle "
                                               "green'; they take no prompts)", elem_id="instruction",
                                         visible=len(methods) > len(METHODS))
                with gr.Row():
                    method = gr.Dropdown(methods, value="p2p" if "p2p" in methods else methods[0], label="method",
                                         elem_id="method")
                    inversion = gr.Dropdown(inversions, value="direct", label="inversion", elem_id="inversion")
                    preset = gr.Radio(list(PRESETS), value="default", label="preset")
                run = gr.Button("Edit", variant="primary", elem_id="run")
                error = gr.Markdown(elem_id="error")
                panel = gr.Image(label="source | edit | mask", type="numpy", interactive=False, elem_id="panel", format="png",
                                 height=280)
                edited = gr.Image(label="edit", type="numpy", interactive=False, elem_id="edited", format="png",
                                  height=280)
                attention = gr.Image(label="attention maps", type="numpy", interactive=False, format="png")
                grid = gr.Image(label="comparison", type="numpy", interactive=False, elem_id="grid", format="png")
                command = gr.Code(label="the command that reproduces this edit", language="shell", elem_id="command")
                download = gr.File(label="PNG with locedit's metadata", elem_id="download")

        common = [editor, source, target, instruction, method, inversion, preset, steps, guidance, seed, region_words,
                  attribute_words, boxes, blend_words, attention_words, *option_boxes]

        on_edit, on_compare = _edit_handlers(session, gr, lambda values: _inputs_of(session, option_keys, values))
        on_file, on_choice = _file_handler(session, gr), _choice_handler(gr, panels)
        example.click(_example_value, outputs=[editor, source, target, upload_error])
        # reading the editor on upload runs its header check at once (a refusal is Gradio's error toast)
        editor.upload(lambda _v: "", inputs=[editor], outputs=[upload_error])
        upload_file.upload(on_file, inputs=[upload_file], outputs=[editor, upload_error, upload_file])
        method.change(on_choice, inputs=[method, inversion], outputs=list(panels.values()))
        inversion.change(on_choice, inputs=[method, inversion], outputs=list(panels.values()))
        # the model's events share one worker: an edit and a comparison never run at once
        run.click(on_edit, inputs=[cache, *common],
                  outputs=[cache, error, panel, edited, attention, command, download], concurrency_id="model")
        compare.click(on_compare, inputs=[cache, compare_methods, *common], outputs=[cache, error, grid],
                      concurrency_id="model")
    return demo


def launch(session: Session, host: str, port: int) -> None:
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    demo = build(session)
    # one edit at a time per process; up to max_queue wait in line, and a request beyond them is told at once
    # that the server is busy (Gradio's "Queue is full") instead of waiting on a connection that may drop
    demo.queue(default_concurrency_limit=1, max_size=session.config.max_queue)
    # Gradio's own banner ends with a share=True hint a command-line user cannot act on: say the address
    # ourselves, once the server is up, and keep Gradio quiet
    demo.launch(server_name=host, server_port=port, max_file_size=session.config.max_bytes, ssr_mode=False,
                show_error=True, quiet=True, footer_links=[], prevent_thread_lock=True)
    import sys

    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    sys.stderr.write(f"locedit ui: serving {session.config.model} on http://{shown}:{port} (Ctrl+C stops it)\n")
    sys.stderr.flush()
    try:
        demo.block_thread()
    finally:
        demo.close()
