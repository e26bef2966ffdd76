"""Training code path: a few steps of each trainer, assembled and loaded through the real loader."""

import json

import torch

from locedit import pipeline
from locedit.diffusion import load_model
from locedit.instruct import instruct_edit
from locedit.world import train


def test_train_assemble_and_load(tmp_path, image):
    base = ["--steps", "2", "--batch", "2", "--log-every", "1", "--device", "cpu", "--save-every", "0"]
    train.main(["vae", "--out", str(tmp_path / "vae0")] + base)
    assert json.loads((tmp_path / "vae0" / "train.json").read_text())["steps"] == 2
    train.main(["vae", "--out", str(tmp_path / "vae"), "--init", str(tmp_path / "vae0")] + base)
    train.main(["t2i", "--out", str(tmp_path / "t2i"), "--vae", str(tmp_path / "vae")] + base)
    train.main(["instruct", "--out", str(tmp_path / "ip2p"), "--vae", str(tmp_path / "vae")] + base)
    log = [json.loads(l) for l in (tmp_path / "t2i" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2] and all(r["loss"] > 0 for r in log)
    # continuing from saved weights starts from them, not from scratch
    train.main(["t2i", "--out", str(tmp_path / "t2i-more"), "--vae", str(tmp_path / "vae"),
                "--init", str(tmp_path / "t2i")] + base)
    # an instruct model can start from the text-to-image weights, widened InstructPix2Pix-style
    train.main(["instruct", "--out", str(tmp_path / "ip2p-from-t2i"), "--vae", str(tmp_path / "vae"),
                "--init", str(tmp_path / "t2i")] + base)
    widened = json.loads((tmp_path / "ip2p-from-t2i" / "unet" / "config.json").read_text())
    assert widened["in_channels"] == 8
    train.main(["assemble", "--vae", str(tmp_path / "vae"), "--t2i", str(tmp_path / "t2i-more"),
                "--instruct", str(tmp_path / "ip2p"), "--dest", str(tmp_path / "models")])
    t2i = load_model(str(tmp_path / "models" / "shapes"))
    assert next(load_model(str(tmp_path / "models" / "shapes"), dtype="fp16").unet.parameters()).dtype == torch.float16
    z = pipeline.generate(t2i, ["a red circle on a gray background"], num_steps=2)
    assert t2i.decode_latents(z).shape == (1, 3, 64, 64)
    ip2p = load_model(str(tmp_path / "models" / "shapes-instruct"))
    assert instruct_edit(ip2p, image, "make the square blue", 2).shape == (1, 4, 16, 16)
    meta = json.loads((tmp_path / "models" / "shapes" / "training.json").read_text())
    assert set(meta) == {"vae", "diffusion"}
    # the shipped folder records its whole lineage: each run's settings and the run it started from
    assert meta["diffusion"]["train.json"]["init"] == str(tmp_path / "t2i")
    assert meta["diffusion"]["init"]["folder"] == str(tmp_path / "t2i") and "init" not in meta["diffusion"]["init"]
    assert meta["vae"]["init"]["train.json"]["steps"] == 2 and meta["vae"]["init"]["folder"] == str(tmp_path / "vae0")


def test_widen_input_keeps_the_function():
    from locedit.diffusion.tiny import tiny_components

    unet, _, _, _, _ = tiny_components()
    unet = unet.eval()
    wide = train.widen_input(unet, 8).eval()
    z, extra = torch.randn(1, 4, 16, 16), torch.randn(1, 4, 16, 16)
    text = torch.randn(1, 8, unet.config.cross_attention_dim)
    t = torch.tensor([500])
    with torch.no_grad():
        before = unet(z, t, encoder_hidden_states=text).sample
        after = wide(torch.cat([z, extra], 1), t, encoder_hidden_states=text).sample
    assert wide.config.in_channels == 8
    torch.testing.assert_close(after, before)
