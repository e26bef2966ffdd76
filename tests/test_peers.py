"""bench/peers: the pieces that run without an official checkout (the side-by-side runs themselves
need the authors' code and their environments, and are a benchmark, not a test)."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

PEERS = Path(__file__).resolve().parents[1] / "bench" / "peers"
sys.path.insert(0, str(PEERS))
sys.path.insert(0, str(PEERS / "drivers"))

import common  # noqa: E402
import measure  # noqa: E402
import pnpinversion  # noqa: E402


def _tiny(seed, image_size, in_channels):
    from diffusers import UNet2DConditionModel

    from locedit.diffusion.tiny import tiny_components

    unet, *rest = tiny_components(seed=seed, image_size=image_size)
    if in_channels != 4:
        unet = UNet2DConditionModel.from_config({**unet.config, "in_channels": in_channels})
    return (unet, *rest)


def test_model_folder_loads_in_locedit_with_the_same_networks(tmp_path):
    """The folder written for both environments (legacy VAE attention names, text_model. prefixes,
    vocab.json/merges.txt) loads through locedit's loader into exactly the networks that were built."""
    from safetensors.torch import load_file

    from locedit.diffusion.loading import load_model

    folder = common.make_model(tmp_path / "m", 64, components=_tiny)
    vae_keys = load_file(folder / "vae" / "diffusion_pytorch_model.safetensors").keys()
    assert any(".proj_attn." in k for k in vae_keys) and not any(".to_q." in k for k in vae_keys)
    assert all(k.startswith("text_model.") for k in load_file(folder / "text_encoder" / "model.safetensors"))
    assert json.loads((folder / "tokenizer" / "vocab.json").read_text())["<|endoftext|>"] == 1
    unet, vae, te, tok, _ = _tiny(0, 64, 4)
    bundle = load_model(str(folder))
    prompt = "a cat sitting on the grass"
    assert bundle.tokenizer(prompt).input_ids == tok(prompt).input_ids
    ids = tok([prompt], padding="max_length", max_length=tok.model_max_length, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(bundle.text_encoder(ids)[0], te.eval()(ids)[0], rtol=0, atol=1e-6)
        x = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 2 - 1
        torch.testing.assert_close(bundle.vae.encode(x).latent_dist.mean, vae.eval().encode(x).latent_dist.mean,
                                   rtol=0, atol=1e-6)
        z, emb = torch.randn(1, 4, 16, 16), te(ids)[0]
        torch.testing.assert_close(bundle.unet(z, 500, emb).sample, unet.eval()(z, 500, emb).sample, rtol=0, atol=1e-6)
    # written once: a second call with the same settings keeps the folder
    stamp = (folder / "locedit-peer.json").stat().st_mtime_ns
    common.make_model(folder, 64, components=_tiny)
    assert (folder / "locedit-peer.json").stat().st_mtime_ns == stamp


def _fake_checkout(root: Path, size_texts: dict[str, str]) -> Path:
    for rel, text in size_texts.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def _pnp_files() -> dict[str, str]:
    """Just the lines PnPInversion's patches look for, as many times as the real files hold them."""
    return {
        "models/p2p_editor.py": 'pipe = from_pretrained("CompVis/stable-diffusion-v1-4", scheduler=s)\n',
        "utils/utils.py": "image.resize((512, 512))\ndef txt_draw(text, target_size=[512,512]):\n",
        "models/p2p/p2p_guidance_forward.py": "    height = width = 512\n" * 4,
        "models/p2p/proximal_guidance_forward.py": "    height = width = 512\n",
        "models/p2p/attention_control.py": ('LATENT_SIZE = (64, 64)\nreshape(b, -1, 1, 16, 16, MAX_NUM_WORDS)\n'
                                            'if attn.shape[1] <= 32 ** 2:\nif att.shape[2] <= 32 ** 2:\n'
                                            + 'def f(device="cuda"):\n' * 6),
    }


def test_pnpinversion_patches_adapt_sizes_and_devices_only(tmp_path):
    checkout = _fake_checkout(tmp_path / "PnPInversion", _pnp_files())
    peer = pnpinversion.PEER
    src = common.prepare_checkout(peer, checkout, tmp_path / "work", 256, "cpu")
    ac = (src / "models/p2p/attention_control.py").read_text()
    assert "LATENT_SIZE = (32, 32)" in ac and "1, 8, 8, MAX_NUM_WORDS" in ac and ac.count("16 ** 2") == 2
    assert ac.count('device="cpu"') == 6 and "cuda" not in ac
    assert (src / "models/p2p/p2p_guidance_forward.py").read_text().count("height = width = 256") == 4
    assert "LOCEDIT_PEER_MODEL" in (src / "models/p2p_editor.py").read_text()
    assert (checkout / "utils/utils.py").read_text() == _pnp_files()["utils/utils.py"]  # the checkout is untouched
    # at the authors' own size on a GPU, only the model id changes
    assert [p.file for p in peer.patches(512, "cuda")] == ["models/p2p_editor.py"]


def test_a_checkout_that_differs_is_refused(tmp_path):
    files = _pnp_files()
    files["models/p2p/p2p_guidance_forward.py"] = "    height = width = 512\n" * 3  # one loop fewer
    checkout = _fake_checkout(tmp_path / "PnPInversion", files)
    with pytest.raises(common.PeerError, match="expected 4 occurrence"):
        common.prepare_checkout(pnpinversion.PEER, checkout, tmp_path / "work", 256, "cpu")
    with pytest.raises(common.PeerError, match="not a folder"):
        common.prepare_checkout(pnpinversion.PEER, tmp_path / "nowhere", tmp_path / "work", 256, "cpu")


def test_meter_counts_unet_calls_by_batch_and_compare_finds_the_largest_difference(tmp_path):
    from locedit.diffusion.tiny import tiny_components

    unet = tiny_components()[0].eval()
    emb = torch.zeros(1, 32, 32)
    with torch.no_grad(), measure.Meter(unet, "cpu", [unet]) as meter:
        for b in (1, 4, 4):
            unet(torch.zeros(b, 4, 16, 16), 10, encoder_hidden_states=emb.expand(b, -1, -1))
        big = torch.ones(64, 1024, 1024)  # 256 MiB held during the work
    fig = meter.figures()
    assert fig["unet_calls"] == {"1": 1, "4": 2}
    assert fig["work_rss_gib"] > 0.2
    del big
    a, b = np.zeros((2, 4, 8, 8), np.float32), np.zeros((2, 4, 8, 8), np.float32)
    b[1, 2, 3, 4] = 0.5
    img = np.zeros((8, 8, 3), np.uint8)
    measure.write(str(tmp_path / "a.json"), fig, torch.from_numpy(a), img)
    measure.write(str(tmp_path / "b.json"), fig, torch.from_numpy(b), img + 3)
    diff = common.compare(tmp_path / "a.npz", tmp_path / "b.npz")
    assert diff["max_diff_latents"] == 0.5 and diff["max_diff_image"] == 3
    # a side with no final output (LIME's localisation stops early) is compared on what both saved
    gram = np.eye(3, dtype=np.float32)
    measure.write(str(tmp_path / "c.json"), fig, torch.from_numpy(a), img, {"gram": gram})
    measure.write(str(tmp_path / "d.json"), fig, None, None, {"gram": gram * 0.75})
    diff = common.compare(tmp_path / "c.npz", tmp_path / "d.npz")
    assert set(diff) == {"max_diff_gram", "latent_scale"} and diff["max_diff_gram"] == 0.25
    import run

    side = {"seconds": {"min": 1.0, "median": 1.0}, "unet_calls": {"3": 5}, "peak_rss_gib": {"median": 1.0},
            "work_rss_gib": {"median": 0.5}}
    text = run.table({"peer": "lime", "commit": "0" * 10, "size": 64, "steps": 15, "device": "cpu", "repeats": 3,
                      "rows": [{"method": "lime-localize", **diff, "official": side, "locedit": side}]})
    assert "| lime-localize | not compared | not compared |" in text and "gram 2.5e-01" in text


def _mag_files() -> dict[str, str]:
    """The lines MAG-Edit's patches look for in code_tr/network.py, as often as the file holds them."""
    text = ('ldm_stable = StableDiffusionPipeline.from_pretrained("./model/sdm-1.4")\n'
            "except AttributeError:\n"
            "mask = torch.zeros((1,1,64,64)).cuda()\nmask = torch.zeros(1,1,64,64).cuda()\n"
            "image.resize((512, 512))\nheight = width = 512\nif attn.shape[2] <= 32 ** 2:\n"
            "a = size=(8,8)\nb = size=(16,16)\nc = size=(32,32)\nd = size=(64,64)\n"
            + "if W==8:\nelif W==16:\nelif W==32:\nelif W==64:\n" * 2
            + "NUM_DDIM_STEPS = 50\n" + "if i < 25:\n" * 2 + "if 50-i <= 15:\n")
    return {"code_tr/network.py": text}


def test_mag_edit_patches_scale_sizes_and_the_step_windows(tmp_path):
    import mag_edit

    checkout = _fake_checkout(tmp_path / "MAG-Edit", _mag_files())
    src = common.prepare_checkout(mag_edit.PEER, checkout, tmp_path / "work", 64, "cpu", 5)
    net = (src / "code_tr/network.py").read_text()
    # the four mask levels of 512 px (8/16/32/64) become 64 px's (1/2/4/8), in both loss functions
    assert "size=(1,1)" in net and "size=(8,8)" in net and "size=(64,64)" not in net
    assert net.count("W==1:") == 2 and net.count("W==8:") == 2 and "W==64" not in net
    assert ".cuda()" not in net and "torch.zeros((1,1,8,8)).to(device)" in net
    # 25 guided and 15 blended steps of 50 -> 2 and 1 of 5, the same numbers the locedit side gets
    assert mag_edit.windows(5) == (2, 1) and net.count("if i < 2:") == 2 and "if 5-i <= 1:" in net
    assert mag_edit.windows(50) == (25, 15)
    # at 512 px on CUDA with 50 steps: only the model id and the xformers guard
    assert [p.old for p in mag_edit.patches(512, "cuda", 50)] == ['"./model/sdm-1.4"', "except AttributeError:"]


def test_mde_edit_patches_fix_its_two_bugs_at_every_size():
    import mde_edit

    fixes = [p for p in mde_edit.patches(512, "cuda", 50) if p.why.startswith("bug")]
    assert {p.new for p in fixes} == {"softmax(2).mean((0, 1))", "adj_mask=None",
                                      "controller.word, controller.prompt, None)",
                                      "[[args.ccl_mask[k] for k, p in enumerate(args.ccl_word)]"}
    assert mde_edit.windows(50) == (20, 25, 15) and mde_edit.spec(5)["guided_steps"] == 2


def test_torchvision_stand_in_rounds_and_resizes_as_torchvision(tmp_path):
    sys.path.insert(0, str(PEERS / "shims"))
    try:
        from PIL import Image

        from torchvision import transforms, utils  # the stand-in (the real one is never installed here)
    finally:
        sys.path.remove(str(PEERS / "shims"))
    assert "standin" in sys.modules["torchvision"].__version__
    from packaging.version import Version

    assert Version(sys.modules["torchvision"].__version__) < Version("0.1")  # torchmetrics compares it
    img = Image.fromarray(np.array([[0, 255], [51, 102]], np.uint8))
    torch.testing.assert_close(transforms.ToTensor()(img), torch.tensor([[[0.0, 1.0], [0.2, 0.4]]]))
    # an int size is the smaller edge; half is resized in float and cast back
    x = torch.arange(2 * 3 * 4, dtype=torch.float16).reshape(2, 3, 4)
    y = transforms.Resize(6)(x)
    assert y.shape == (2, 6, 8) and y.dtype == torch.float16
    # save_image rounds (x * 255 + 0.5): 0.5 -> 128, where truncation would give 127
    path = tmp_path / "half.png"
    utils.save_image(torch.full((3, 2, 2), 0.5), path)
    assert np.asarray(Image.open(path))[0, 0, 0] == 128
    del sys.modules["torchvision"], sys.modules["torchvision.transforms"], sys.modules["torchvision.utils"]


def test_instruct_model_folder_ships_the_checkpoints_euler_ancestral_scheduler(tmp_path):
    from locedit.diffusion.loading import load_model

    folder = common.make_model(tmp_path / "ip2p", 64, instruct=True, components=_tiny)
    cfg = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    assert cfg["_class_name"] == "EulerAncestralDiscreteScheduler" and cfg["timestep_spacing"] == "linspace"
    bundle = load_model(str(folder))
    assert bundle.unet.config.in_channels == 8


def test_lime_peer_keeps_the_notebooks_windows_and_adapts_sizes_only():
    import lime_ip2p

    assert lime_ip2p.ranges(30) == ([0, 10], [0, 26])  # the notebook's apply_mask_range values
    assert lime_ip2p.ranges(15) == ([0, 5], [0, 13])
    assert lime_ip2p.patches(512, "cuda", 30) == []
    new = {p.new for p in lime_ip2p.patches(64, "cpu", 15)}
    assert new == {"attn.shape[1] < 8 ** 2", "if res > 2:"}
    assert lime_ip2p.PEER.instruct


def _dpl_files() -> dict[str, str]:
    """The lines the DPL (LocInv) patches look for, as often as the real pipeline modules hold them."""
    store = ("        if is_cross and self.curr_step_index < cross_replace_steps:\n"
             "        elif (not is_cross) and self.curr_step_index < self_replace_steps:\n"
             "            if H <= 256:\n")
    return {
        "pipelines/seg_null_textinv_pipeline.py": "x = torch.Tensor([0.0]).cuda()\n" * 5,
        "pipelines/edit_pipeline.py": ("        #     if H <= 256:\n" + store * 2
                                       + "uncond_embeddings_list[i].cuda()\n" * 2 + "encoder_hidden_states.cuda()\n" * 2
                                       + "temp=F.interpolate(temp, size=(64,64))\n"),
        "pipelines/ddim_pipeline.py": "    def get_average_attention(self, device='cuda'):\n",
    }


def test_dpl_patches_fix_the_editors_step_count_and_adapt_sizes(tmp_path):
    import dpl

    src = common.prepare_checkout(dpl.PEER, _fake_checkout(tmp_path / "DPL", _dpl_files()), tmp_path / "w", 64, "cpu", 3)
    edit = (src / "pipelines/edit_pipeline.py").read_text()
    assert edit.count("if H <= 4:") == 3 and ".cuda()" not in edit and "size=(8,8)" in edit
    # at 512 px on CUDA only the two bug fixes remain
    assert {p.why.split(":")[0] for p in dpl.patches(512, "cuda", 50)} == {"bug", "the same for the self-attention window (no effect on SD, whose last layer is a cross-attention one)"}
    line = next(ln for ln in edit.splitlines() if "if is_cross and" in ln).strip()
    test = line[len("if "):-1]

    class Store:  # their store's order: count the call, advance the step after the last layer, then test
        def __init__(self, layers):
            self.num_att_layers, self.cur_att_layer, self.curr_step_index = layers, 0, 0

        def call(self, cross_replace_steps, is_cross=True):
            self.cur_att_layer += 1
            if self.cur_att_layer == self.num_att_layers:
                self.cur_att_layer = 0
                self.curr_step_index += 1
            return eval(test, {}, {"self": self, "is_cross": is_cross, "cross_replace_steps": cross_replace_steps})

    store = Store(4)
    replaced = [[store.call(2) for _ in range(4)] for _ in range(3)]  # 3 steps of 4 layers, window 2 steps
    assert replaced == [[True] * 4, [True] * 4, [False] * 4]  # every layer, the last one too, in steps 0 and 1
    unpatched = "self.curr_step_index < cross_replace_steps"
    test, store = unpatched, Store(4)
    assert [[store.call(2) for _ in range(4)] for _ in range(3)][1] == [True, True, True, False]  # the bug


def test_dpl_prior_is_small_enough_to_leave_map_cells_empty(tmp_path):
    import dpl
    from PIL import Image

    assert dpl.windows(50) == (40, 20) and dpl.windows(3) == (2, 1)
    read = {}
    for size, side in ((64, 2), (512, 16)):
        image = tmp_path / f"input-{size}.png"
        Image.new("RGB", (size, size)).save(image)
        read[size] = np.asarray(Image.open(dpl.inputs(image)["prior"]).resize((side, side))).astype(bool)  # read_segfile
    assert read[64].tolist() == [[True, False], [False, False]]  # the top-left cell alone
    assert 0 < read[512].sum() < 30  # a few of the 256 cells


def test_efficiency_script_runs_the_locedit_side_alone_and_divides_plain_unet_time_by_wall_time(tmp_path, monkeypatch):
    """bench/peers/efficiency.py: the locedit side of a peer's row, with no official checkout, in a
    fresh process; its efficiency is the plain time of the same UNet calls over the wall time."""
    import efficiency
    import run

    monkeypatch.setattr(run, "make_model", lambda folder, size, instruct=False: common.make_model(
        folder, size, instruct=instruct, components=_tiny))
    out = tmp_path / "eff.json"
    assert efficiency.main(["lime", "--work", str(tmp_path), "--steps", "3", "--methods", "lime-edit-mask",
                            "--threads", "1", "--json", str(out)]) == 0
    (row,) = json.loads(out.read_text())["rows"]
    assert row["unet_calls"] == {"3": 3}  # IP2P: one batch-3 call per step, nothing else
    fig = json.loads((tmp_path / "lime" / "efficiency" / "lime-edit-mask-64-3-0.json").read_text())
    assert fig["unet_efficiency"] == pytest.approx(row["plain_unet_seconds"] / fig["seconds"])
    assert efficiency.main(["lime", "--work", str(tmp_path), "--methods", "lime-nothing"]) == 2


def test_flux_weights_map_one_to_one_onto_the_reference_layout():
    """Every diffusers FLUX parameter lands in exactly one reference tensor (numbers conserved), with
    the reference shapes: fused q/k/v (3 x width rows), the single blocks' q/k/v + MLP input
    (3 x width + 4 x width rows), and the final modulation's halves swapped (shift first)."""
    from flux_reference import reference_state

    from locedit.diffusion.tiny_flow import tiny_flux

    t = tiny_flux(0, num_layers=2, num_single_layers=3, latent_channels=16).transformer
    sd = t.state_dict()
    ref = reference_state(sd, 2, 3)
    assert sum(v.numel() for v in ref.values()) == sum(v.numel() for v in sd.values())
    width = t.config.num_attention_heads * t.config.attention_head_dim
    assert ref["double_blocks.1.img_attn.qkv.weight"].shape == (3 * width, width)
    assert torch.equal(ref["double_blocks.1.txt_attn.qkv.weight"][width:2 * width],
                       sd["transformer_blocks.1.attn.add_k_proj.weight"])
    assert ref["single_blocks.2.linear1.weight"].shape == (7 * width, width)
    assert torch.equal(ref["single_blocks.2.linear1.weight"][3 * width:], sd["single_transformer_blocks.2.proj_mlp.weight"])
    scale, shift = sd["norm_out.linear.weight"].chunk(2)
    assert torch.equal(ref["final_layer.adaLN_modulation.1.weight"], torch.cat([shift, scale]))


def test_flux_peers_locedit_side_runs_each_editor_on_the_shared_inputs(tmp_path):
    """bench/peers/flux_run.py's shared inputs and locedit's driver, in a fresh process as the runner
    calls it: one transformer call, and KV-Edit with the shared mask (background exact)."""
    import flux_run

    base = {**flux_run.make_inputs(tmp_path, 32), "device": "cpu", "seed": 0, "source": flux_run.SOURCE,
            "target": flux_run.TARGET, "threads": 1}
    probe = common.run_process(sys.executable, common.DRIVERS / "flux_locedit.py",
                               {**base, "editor": "model", "options": {}}, tmp_path / "model.json")
    assert probe["unet_calls"] == {"1": 1}
    assert np.load(tmp_path / "model.npz")["latents"].shape == (1, 64, 64)
    run = flux_run.PEERS["kv-edit"][1](3)["kv-edit"]
    fig = common.run_process(sys.executable, common.DRIVERS / "flux_locedit.py",
                             {**base, "editor": run.editor, "options": run.locedit, "mask": True}, tmp_path / "kv.json")
    assert fig["unet_calls"] == {"1": 4}  # (3 - skip 1) inversion + edit steps
    x = np.load(base["inputs"])["x"]
    z = np.load(tmp_path / "kv.npz")["latents"]
    from locedit.flow.kvedit import latent_mask

    m = latent_mask(torch.from_numpy(np.load(base["inputs"])["mask"]), 16, 16).numpy()
    outside = np.broadcast_to(m == 0, x.shape)
    assert np.array_equal(z[outside], x[outside]) and np.abs(z - x).max() > 1e-3


def test_pnp_metrics_run_length_codes_decode_back_and_the_locedit_side_has_every_metric(tmp_path):
    """bench/peers/pnp_metrics.py's pieces that need no checkout: its run-length code decodes back
    through locedit's decode_pie_mask (the border set, as the reference does), and the locedit side
    gives the whole-image metrics always and the part metrics where the part is not empty."""
    import pnp_metrics

    from locedit.bench import decode_pie_mask

    m = np.zeros((pnp_metrics.SIZE, pnp_metrics.SIZE), np.uint8)
    m[100:200, 50:300] = 1
    m[400, 10:20] = 1
    back = decode_pie_mask(pnp_metrics.rle(m), pnp_metrics.SIZE)
    inner = (slice(1, -1), slice(1, -1))
    assert np.array_equal(back[inner], m[inner]) and back[0].all() and back[:, -1].all()
    items = pnp_metrics.make_items(tmp_path, 2)
    rows = pnp_metrics.locedit_side(items)
    assert set(rows[0]) == {"mask", *pnp_metrics.METRICS}
    # the empty mask decodes to its border alone (as the reference's): both parts stay non-empty
    assert rows[1]["mask"].sum() == 4 * pnp_metrics.SIZE - 4 and set(rows[1]) == set(rows[0])
