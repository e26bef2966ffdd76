"""Learned metrics' plumbing with tiny random stand-ins (real weights cannot be fetched here)."""

import pytest
import torch
import torch.nn as nn

from locedit.errors import LoceditError
from locedit.metrics.learned import (
    LPIPS,
    alexnet_features,
    clip_i,
    clip_score,
    dino_key_self_similarity,
    dino_similarity,
    dino_structure_distance,
    load_clip,
    load_dino,
    load_lpips,
    squeezenet_features,
)


def _imgs(seed=0, n=2, size=64):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("net", ["alex", "squeeze"])
def test_lpips_backbones_build_without_torchvision_and_behave(net):
    torch.manual_seed(0)
    m = LPIPS(net)
    for k in range(len(m.taps)):
        nn.init.uniform_(getattr(m, f"lin{k}").model[1].weight, 0, 1)
    a, b = _imgs(0), _imgs(1)
    d = m(a, b)
    assert d.shape == (2,) and torch.all(d > 0)
    assert torch.allclose(m(a, a), torch.zeros(2), atol=1e-7)
    torch.testing.assert_close(d, m(b, a))
    keys = set(m.state_dict())
    assert "net.0.weight" in keys and "lin0.model.1.weight" in keys


def test_lpips_tiny_stand_in_and_missing_weights(tmp_path):
    tiny = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    m = LPIPS("alex", features=tiny, taps=(1, 3), channels=(4, 4))
    nn.init.constant_(m.lin0.model[1].weight, 1.0)
    assert m(_imgs(0), _imgs(2)).min() > 0
    with pytest.raises(LoceditError, match="lpips_alex.safetensors"):
        load_lpips("alex", tmp_path)
    from safetensors.torch import save_file

    ref = LPIPS("squeeze")
    save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "lpips_squeeze.safetensors"))
    loaded = load_lpips("squeeze", tmp_path)
    torch.testing.assert_close(loaded(_imgs(0), _imgs(1)), ref(_imgs(0), _imgs(1)))
    # from the published files' layouts: torchvision's checkpoint and the lpips package's heads
    from locedit.metrics.learned import lpips_state_dict

    backbone = {f"features.{k}": v for k, v in ref.net.state_dict().items()}
    backbone["classifier.1.weight"] = torch.zeros(1000, 512, 1, 1)
    heads = {k: v for k, v in ref.state_dict().items() if k.startswith("lin")}
    save_file(lpips_state_dict(backbone, heads), str(tmp_path / "lpips_squeeze.safetensors"))
    torch.testing.assert_close(load_lpips("squeeze", tmp_path)(_imgs(0), _imgs(1)), ref(_imgs(0), _imgs(1)))


@pytest.fixture(scope="module")
def tiny_clip():
    from transformers import CLIPConfig, CLIPModel

    from locedit.diffusion.tiny import TINY_WORDS, word_tokenizer

    tok = word_tokenizer(TINY_WORDS, model_max_length=16)
    torch.manual_seed(0)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, max_position_embeddings=16, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=16,
    )
    return CLIPModel(cfg).eval(), tok


def test_clip_scores(tiny_clip):
    model, tok = tiny_clip
    a = _imgs(0)
    from locedit.metrics.learned import clip_image_embeddings, clip_text_embeddings

    texts = ["a red cat", "a blue dog"]
    s = clip_score(model, tok, a, texts)
    cos = (clip_image_embeddings(model, a) * clip_text_embeddings(model, tok, texts)).sum(-1)
    torch.testing.assert_close(s, 100 * cos.clamp_min(0))
    assert s.shape == (2,) and torch.all(s >= 0) and torch.all(s <= 100)
    mask = torch.zeros(2, 1, 64, 64)
    mask[..., :32, :32] = 1
    masked = clip_image_embeddings(model, a * mask)
    assert not torch.allclose(masked, clip_image_embeddings(model, a))
    cos_m = (masked * clip_text_embeddings(model, tok, texts)).sum(-1)
    torch.testing.assert_close(clip_score(model, tok, a, texts, mask=mask), 100 * cos_m.clamp_min(0))
    crop = clip_score(model, tok, a, texts, box=(0, 0, 32, 32))
    cos_c = (clip_image_embeddings(model, a[..., :32, :32]) * clip_text_embeddings(model, tok, texts)).sum(-1)
    torch.testing.assert_close(crop, 100 * cos_c.clamp_min(0))
    torch.testing.assert_close(clip_i(model, a, a), torch.ones(2), rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_dino():
    from transformers import ViTConfig, ViTModel

    torch.manual_seed(0)
    return ViTModel(ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              image_size=32, patch_size=8), add_pooling_layer=False).eval()


def test_dino_structure_and_similarity(tiny_dino):
    a, b = _imgs(0), _imgs(3)
    sim = dino_key_self_similarity(tiny_dino, a)
    tokens = (32 // 8) ** 2 + 1
    assert sim.shape == (2, tokens, tokens)
    torch.testing.assert_close(torch.diagonal(sim, dim1=1, dim2=2), torch.ones(2, tokens), rtol=1e-5, atol=1e-5)
    d = dino_structure_distance(tiny_dino, a, b)
    assert torch.all(d > 0) and torch.allclose(dino_structure_distance(tiny_dino, a, a), torch.zeros(2))
    assert not torch.allclose(d, dino_structure_distance(tiny_dino, a, b, raw_255=False))  # the quirk matters
    torch.testing.assert_close(dino_similarity(tiny_dino, a, a), torch.ones(2), rtol=1e-5, atol=1e-5)


def test_missing_pretrained_models_fail_in_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    for loader in (load_clip, load_dino):
        with pytest.raises(LoceditError) as info:
            loader("someone/not-here")
        assert "\n" not in str(info.value) and "not-here" in str(info.value)


def test_clip_input_is_clip_image_processors_from_8_bit_images():
    # PIE-Bench's CLIP score (torchmetrics' CLIPScore) preprocesses 8-bit images with CLIPImageProcessor:
    # PIL's bicubic on the short side, a centre crop, 1/255, CLIP's normalisation
    import numpy as np
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from locedit.metrics.learned import _clip_pixels

    x = torch.rand(2, 3, 48, 70, generator=torch.Generator().manual_seed(0))
    proc = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    eight_bit = [(im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for im in x]
    torch.testing.assert_close(_clip_pixels(x, 32), proc(images=eight_bit, return_tensors="pt").pixel_values,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(_clip_pixels(x.transpose(2, 3), 32),
                               proc(images=[a.transpose(1, 0, 2).copy() for a in eight_bit],
                                    return_tensors="pt").pixel_values, rtol=0, atol=1e-6)


def test_mag_edits_box_metrics_crop_to_the_edit_without_pie_benchs_border(tiny_clip, tiny_dino):
    """clip_box / structure_distance_box (MAG-Edit's Table 1 protocol): CLIP score and DINO distance on
    the box around the mask, the 1-pixel ring PIE-Bench's decoder sets on every mask left out."""
    from locedit.bench.datasets import EditItem
    from locedit.bench.runner import LearnedMetrics, edit_box

    mask = torch.zeros(1, 1, *_imgs(0).shape[-2:])
    mask[..., 5:10, 3:12] = 1
    mask[..., 0, :] = mask[..., -1, :] = mask[..., :, 0] = mask[..., :, -1] = 1  # PIE's border
    assert edit_box(mask) == (3, 5, 12, 10)
    assert edit_box(torch.zeros(1, 1, 20, 30)) == (0, 0, 30, 20)
    src, out = _imgs(0)[:1], _imgs(3)[:1]
    item = EditItem("a", src, "a red circle", "a blue circle", mask=mask)
    row = LearnedMetrics(clip=tiny_clip, dino=tiny_dino).compute(item, out)
    model, tok = tiny_clip
    want_clip = clip_score(model, tok, out[..., 5:10, 3:12], ["a blue circle"])
    want_dino = dino_structure_distance(tiny_dino, src[..., 5:10, 3:12], out[..., 5:10, 3:12])
    assert row["clip_box"] == float(want_clip[0]) and row["structure_distance_box"] == float(want_dino[0])
    assert row["structure_distance_box"] != row["structure_distance"]
