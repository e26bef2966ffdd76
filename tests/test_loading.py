import shutil

import pytest
import torch

from locedit.diffusion import load_model
from locedit.diffusion.loading import check_safetensors
from locedit.errors import ModelLoadError


def test_saved_model_loads_through_real_loader_and_predicts_the_same(bundle, model_dir):
    loaded = load_model(str(model_dir), "cpu", "fp32")
    assert loaded.image_size == bundle.image_size
    assert loaded.tokenizer("a red cat").input_ids == bundle.tokenizer("a red cat").input_ids
    z = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    emb_a, emb_b = bundle.encode_text(["a red cat"]), loaded.encode_text(["a red cat"])
    torch.testing.assert_close(emb_a, emb_b)
    s = bundle.schedule(10)
    torch.testing.assert_close(bundle.predict_eps(z, s.timesteps[3], s.alphas[3], emb_a),
                               loaded.predict_eps(z, s.timesteps[3], s.alphas[3], emb_b))


def test_v_prediction_config_is_honoured(model_dir, tmp_path):
    import json

    folder = tmp_path / "vpred"
    shutil.copytree(model_dir, folder)
    cfg_path = folder / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = "v_prediction"
    cfg_path.write_text(json.dumps(cfg))
    assert load_model(str(folder)).prediction_type == "v_prediction"


@pytest.mark.parametrize("dtype,expected", [("fp16", torch.float16), ("bf16", torch.bfloat16)])
def test_dtype_is_explicit(model_dir, dtype, expected):
    b = load_model(str(model_dir), "cpu", dtype)
    assert next(b.unet.parameters()).dtype == expected
    assert not any(p.requires_grad for p in b.unet.parameters())


def test_pickle_weights_are_refused(model_dir, tmp_path):
    folder = tmp_path / "pickled"
    shutil.copytree(model_dir, folder)
    unet_dir = folder / "unet"
    for f in unet_dir.glob("*.safetensors"):
        f.unlink()
    torch.save({}, unet_dir / "diffusion_pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="pickle"):
        check_safetensors(folder)
    with pytest.raises(ModelLoadError, match="safetensors only"):
        load_model(str(folder))


def test_missing_model_names_what_was_looked_for():
    with pytest.raises(ModelLoadError, match="/no/such/model"):
        load_model("/no/such/model")


def test_hub_id_offline_gives_one_line_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as info:
        load_model("nobody-here/no-such-model-xyz")
    assert "nobody-here/no-such-model-xyz" in str(info.value) and "\n" not in str(info.value)


def test_incomplete_folder(model_dir, tmp_path):
    folder = tmp_path / "partial"
    shutil.copytree(model_dir, folder)
    shutil.rmtree(folder / "vae")
    with pytest.raises(ModelLoadError, match="vae"):
        load_model(str(folder))


def test_loading_prints_no_library_bars_and_restores_their_setting(model_dir, capfd):
    """Issue 31: the library says nothing while it loads (transformers' and diffusers' own loading bars
    are off during load_model), and the libraries' setting is as it was afterwards."""
    import diffusers.utils.logging as d
    import transformers.utils.logging as t

    from locedit.diffusion import load_model

    d.enable_progress_bar(), t.enable_progress_bar()
    capfd.readouterr()
    load_model(str(model_dir))
    err = capfd.readouterr().err
    assert "Loading" not in err and "it/s" not in err, err
    assert d.is_progress_bar_enabled() and t.is_progress_bar_enabled()
