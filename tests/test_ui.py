"""The web app's functions without a browser, on the tiny model."""

import shlex

import numpy as np
import pytest
from PIL import Image

from locedit.cli import main
from locedit.errors import LoceditError
from locedit.ui.app import AppConfig, EditInputs, Session, layer_masks

SRC = "a red square on the gray background"
TGT = "a blue square on the gray background"


@pytest.fixture(scope="module")
def session(bundle):
    return Session(AppConfig(model="tiny-random"), bundle)


@pytest.fixture(scope="module")
def picture():
    a = np.full((64, 64, 3), 128, np.uint8)
    a[16:40, 20:44] = [230, 25, 25]
    return a


def square_mask():
    m = np.zeros((64, 64), bool)
    m[14:42, 18:46] = True
    return m


def test_the_shown_command_reproduces_the_edit(session, picture, tmp_path):
    inputs = EditInputs(picture, SRC, TGT, method="p2p", inversion="ddim", steps=3, masks=[square_mask()],
                        options={"cross-replace": "0.6"})
    out = session.edit(inputs, {})
    argv = shlex.split(out.command)[1:]
    assert argv[:2] == ["edit", "IMAGE.png"] and "--cross-replace" in argv and "--mask" in argv
    Image.fromarray(picture).save(tmp_path / "IMAGE.png")
    Image.fromarray(square_mask().astype(np.uint8) * 255).save(tmp_path / "MASK1.png")
    files = {"IMAGE.png", "MASK1.png"}
    real = [str(tmp_path / a) if a in files else a for a in argv]
    assert main(real + ["--out", str(tmp_path / "EDIT.png"), "--quiet"]) == 0
    again = np.asarray(Image.open(tmp_path / "EDIT.png").convert("RGB"))
    assert np.array_equal(again, out.edited)
    # the download is the edit as a PNG with locedit's metadata, its command the one shown
    info = Image.open(out.png).info
    assert info["locedit:method"] == "p2p" and info["locedit:target"] == TGT
    assert info["locedit:command"] == out.command


def test_the_inversion_is_reused_when_only_the_edit_changes(session, picture):
    cache = {}
    first = session.edit(EditInputs(picture, SRC, TGT, inversion="ddim", steps=3), cache)
    assert not first.summary.get("inversion_reused") and first.summary["inversion_unet_calls"] == 3
    other = EditInputs(picture, SRC, "a green square on the gray background", method="masactrl", inversion="ddim",
                       steps=3, options={"masactrl-step": "1"})
    second = session.edit(other, cache)
    assert second.summary["inversion_reused"] and second.summary["inversion_unet_calls"] == 0
    assert np.array_equal(second.edited, session.edit(other, {}).edited)  # the same as a fresh inversion
    changed = session.edit(EditInputs(picture, "a red box on the gray background", TGT, inversion="ddim", steps=3), cache)
    assert not changed.summary.get("inversion_reused")  # a new source prompt inverts again


def test_a_failed_edit_is_one_line_and_the_session_stays_usable(session, picture):
    cache = {}
    with pytest.raises(LoceditError, match="--masactrl-step"):
        session.edit(EditInputs(picture, SRC, TGT, method="masactrl", steps=3, options={"masactrl-step": "x"}), cache)
    with pytest.raises(LoceditError, match="is not used by --method mag-edit"):
        session.edit(EditInputs(picture, SRC, TGT, method="mag-edit", steps=3, blend_words="red blue"), cache)
    with pytest.raises(LoceditError, match="give both prompts"):
        session.edit(EditInputs(picture, SRC, " ", steps=3), cache)
    small = Session(AppConfig(model="tiny-random", max_pixels=1000), session.bundle)
    with pytest.raises(LoceditError, match="over this server's limit of 1000"):
        small.edit(EditInputs(picture, SRC, TGT, steps=3), cache)
    assert session.edit(EditInputs(picture, SRC, TGT, inversion="ddim", steps=3), cache).edited.shape == (64, 64, 3)


def test_layers_become_masks_of_the_image_size():
    layer = np.zeros((128, 128, 4), np.uint8)
    layer[10:20, 30:50, 3] = 255
    empty = np.zeros((128, 128, 4), np.uint8)
    masks = layer_masks({"background": None, "layers": [layer, empty]}, (64, 64))
    assert len(masks) == 1 and masks[0].shape == (64, 64)
    assert masks[0][5:10, 15:25].all() and masks[0].sum() == 5 * 10


def test_region_words_pair_with_layers_in_order(session, picture):
    a, b = square_mask(), np.zeros((64, 64), bool)
    b[40:60, 40:60] = True
    argv = session.command(EditInputs(picture, SRC, TGT, method="mde-edit", masks=[a, b], region_words="square, x",
                                      attribute_words="blue"), {"MASK1.png": "", "MASK2.png": ""})
    assert "--region" in argv and argv[argv.index("--region") + 1] == "square=MASK1.png"
    assert argv.count("--region") == 2 and argv[argv.index("--attribute") + 1] == "blue=MASK1.png"
    assert "--inversion" in argv  # MDE-Edit takes one; SDEdit does not
    assert "--inversion" not in session.command(EditInputs(picture, SRC, TGT, method="sdedit"), {})
    # Blended Latent Diffusion takes one only when its noise option says so, as the CLI decides
    assert "--inversion" not in session.command(EditInputs(picture, SRC, TGT, method="blended"), {})
    assert "--inversion" in session.command(EditInputs(picture, SRC, TGT, method="blended",
                                                       options={"blended-noise": "inversion"}), {})


def test_the_page_offers_every_registry_method_and_inversion(session):
    gr = pytest.importorskip("gradio")
    from locedit.inversion import INVERSIONS
    from locedit.methods import METHODS
    from locedit.ui.page import build

    from locedit.instruct import INSTRUCT_METHODS

    demo = build(session)  # with an instruct model configured: the instruction methods too
    labels = {getattr(c, "label", None) for c in demo.blocks.values()}
    for name in list(METHODS) + list(INSTRUCT_METHODS) + list(INVERSIONS):
        assert f"{name} options" in labels
    dropdowns = [c for c in demo.blocks.values() if isinstance(c, gr.Dropdown) and c.label in ("method", "inversion")]
    assert {tuple(v for v, _ in d.choices) for d in dropdowns} == {tuple(METHODS) + tuple(INSTRUCT_METHODS),
                                                                    tuple(INVERSIONS)}


def test_ui_command_refuses_a_bad_port_and_warns_off_localhost(capsys, monkeypatch):
    pytest.importorskip("gradio")
    assert main(["ui", "--port", "70000"]) == 2
    assert "is not a port number" in capsys.readouterr().err
    import locedit.ui.page as page

    monkeypatch.setattr(page, "launch", lambda session, host, port: None)  # no server in this test
    assert main(["ui", "--model", "tiny-random", "--host", "0.0.0.0", "--port", "7999"]) == 0
    assert "reachable from other machines" in capsys.readouterr().err


def test_instruction_methods_run_through_locedit_instruct(instruct_bundle, picture, tmp_path):
    from locedit.ui.app import AppConfig, Session

    s = Session(AppConfig(model="tiny-random", instruct_model="tiny-instruct"), None)
    s.instruct_bundle = instruct_bundle  # what the first instruction edit would load
    out = s.edit(EditInputs(picture, "", "", method="ip2p", instruction="make the square blue", steps=3))
    argv = shlex.split(out.command)[1:]
    assert argv[:2] == ["instruct", "IMAGE.png"] and argv[argv.index("--method") + 1] == "ip2p"
    assert out.edited.shape == (64, 64, 3)
    with pytest.raises(LoceditError, match="edits by an instruction"):
        s.edit(EditInputs(picture, SRC, TGT, method="lime", steps=3))
    with pytest.raises(LoceditError, match="boxes are not used by --method ip2p"):
        s.edit(EditInputs(picture, "", "", method="ip2p", instruction="make it blue", boxes="1,1,9,9", steps=3))


def test_the_compare_progress_names_the_method_it_is_on(session, picture):
    """Issue 31: each bar of a comparison says which method runs."""
    pytest.importorskip("gradio")
    from locedit.ui.page import progress_adapter

    class Display:
        def __init__(self):
            self.descs = []

        def tqdm(self, iterable, desc):
            self.descs.append(desc)
            return iterable

    display = Display()
    session.edit(EditInputs(picture, SRC, TGT, method="masactrl", inversion="ddim", steps=3,
                            options={"masactrl-step": "1"}), {}, progress_adapter(display, "masactrl: "))
    assert display.descs and all(d.startswith("masactrl: ") for d in display.descs)
    assert any("editing" in d for d in display.descs)


def test_a_failed_edit_clears_the_previous_result_on_the_page(session, picture):
    """Issue 31: a new error does not leave the previous result shown as if it were current."""
    gr = pytest.importorskip("gradio")
    from locedit.ui.page import _edit_handlers

    class Display:
        def tqdm(self, iterable, desc):
            return iterable

    good = EditInputs(picture, SRC, TGT, inversion="ddim", steps=3)
    bad = EditInputs(picture, SRC, " ", inversion="ddim", steps=3)
    on_edit, _ = _edit_handlers(session, gr, lambda values: values[0])
    ok = on_edit({}, good, progress=Display())
    assert ok[2] is not None and ok[5].startswith("locedit edit")
    assert "no mask was drawn" in ok[1]  # an edit without a mask says so next to the result
    masked = on_edit({}, EditInputs(picture, SRC, TGT, inversion="ddim", steps=3, masks=[square_mask()]),
                     progress=Display())
    assert "no mask" not in masked[1] and "--mask MASK1.png" in masked[5]
    failed = on_edit({}, bad, progress=Display())
    assert "give both prompts" in failed[1] and failed[2:] == (None, None, None, "", None)


def test_the_comparison_grid_labels_every_tile_readably(picture):
    """Issue 31: the grid's labels were about 8 px and the source tile's could not be read: every tile,
    the source's included, gets a label whose lower-case letters alone are at least 8 px tall (the
    bitmap default drew them about 5 px)."""
    from locedit.ui.app import comparison_grid

    grid = comparison_grid([("source", picture), ("p2p", picture), ("masactrl", picture)])
    width = grid.shape[1] // 3
    for k in range(3):
        band = grid[:28, k * width: (k + 1) * width].min(axis=2) < 128  # dark text on the white band
        rows = np.where(band.any(axis=1))[0]
        assert len(rows) and rows.max() - rows.min() + 1 >= 8, k


def _png_header(path, width, height):
    """A PNG whose header says width x height (no pixel data: the header is all a check may read)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_the_editor_refuses_a_file_by_its_header_before_gradio_decodes_it(tmp_path, monkeypatch):
    """Issue 32: an image dropped into the editor is checked like the file picker's - by its header,
    before any pixel is decoded - and a refusal is one readable message (no server traceback)."""
    import gradio as gr
    from gradio.data_classes import FileData
    from PIL import Image

    from locedit.ui.app import AppConfig, Session
    from locedit.ui.page import checked_editor

    session = Session(AppConfig(max_pixels=5000), bundle=None)
    editor = checked_editor(gr, session, type="numpy", image_mode="RGBA")
    decoded = []
    real_load = Image.Image.load
    monkeypatch.setattr(Image.Image, "load", lambda self: decoded.append(self.size) or real_load(self))
    cases = {"12000x12000 = 144000000 pixels": _png_header(tmp_path / "big.png", 12000, 12000),
             "20000x20000 = 400000000 pixels": _png_header(tmp_path / "bomb.png", 20000, 20000),
             "cannot be read": tmp_path / "notes.png"}
    (tmp_path / "notes.png").write_text("not an image")
    for needle, path in cases.items():
        with pytest.raises(gr.Error) as err:
            editor.convert_and_format_image(FileData(path=str(path), orig_name=path.name))
        assert needle in err.value.message and str(tmp_path) not in err.value.message, err.value.message
    assert decoded == []
    small = tmp_path / "small.png"
    Image.fromarray(np.full((40, 40, 3), 200, np.uint8)).save(small)
    assert editor.convert_and_format_image(FileData(path=str(small), orig_name="small.png")).shape == (40, 40, 4)
    assert type(editor) is gr.ImageEditor  # Gradio's own editor (no component class of ours: no .pyi written)


def test_on_a_flow_model_the_app_offers_and_runs_the_flow_editors(tmp_path):
    """A FLUX model loaded by the app: its methods are the flow editors; an edit with two drawn layers
    runs KV-Edit through locedit.api.flow_edit inside their union, its command (``locedit edit``)
    reproduces it, and a region word (a UNet methods' input) is refused in one line; the page builds."""
    from locedit.diffusion import load_model
    from locedit.diffusion.tiny_flow import tiny_flux
    from locedit.ui.app import method_names
    from locedit.ui.page import build

    tiny_flux(0).save_pretrained(tmp_path / "flux", safe_serialization=True)
    session = Session(AppConfig(model=str(tmp_path / "flux"), instruct_model=None),
                      load_model(str(tmp_path / "flux"), "cpu", "fp32"))
    assert method_names(session.config, session.bundle) == ["flowedit", "rf-solver-edit", "fireflow-edit", "kv-edit",
                                                             "rf-inversion", "uniedit-flow"]
    a = np.full((40, 40, 3), 128, np.uint8)
    a[8:24, 8:24] = [230, 25, 25]
    top, left = np.zeros((40, 40), bool), np.zeros((40, 40), bool)
    top[6:14, 6:26], left[12:26, 6:14] = True, True
    inputs = EditInputs(a, "a red square", "a blue square", method="kv-edit", masks=[top, left],
                        options={"steps": "3", "skip": "0"})
    out = session.edit(inputs)
    assert out.edited.shape == (40, 40, 3) and out.summary["method"] == "kv-edit" and out.summary["model_calls"] == 6
    argv = shlex.split(out.command)
    assert argv[:2] == ["locedit", "edit"] and "--steps" in argv and "--mask" in argv
    Image.fromarray(a).save(tmp_path / "IMAGE.png")
    Image.fromarray(((top | left) * 255).astype(np.uint8)).save(tmp_path / "MASK.png")
    again = tmp_path / "again.png"
    argv = [w.replace("IMAGE.png", str(tmp_path / "IMAGE.png")).replace("MASK.png", str(tmp_path / "MASK.png"))
            for w in argv[1:]]
    assert main(argv + ["--out", str(again), "--quiet"]) == 0
    assert np.array_equal(np.asarray(Image.open(again).convert("RGB")), out.edited)
    with pytest.raises(LoceditError, match="region words are not used by --method kv-edit"):
        session.edit(EditInputs(a, "a red square", "a blue square", method="kv-edit", masks=[top],
                                region_words="square"))
    build(session)
