"""PnPInversion's PIE-Bench evaluation code (``evaluation/evaluate.py``'s ``mask_decode`` and
``calculate_metric``, ``evaluation/matrics_calculator.py``'s ``MetricsCalculator``) on the given image
pairs, inside its environment. Each pair is evaluated as ``evaluate.py`` does: the mask decoded,
repeated over the three channels, ``calculate_metric(calculator, metric, src, tgt, mask, mask,
src_prompt, tgt_prompt)``.

``method`` "pixel": the calculator is built without its ``__init__`` (which loads CLIP, LPIPS's
network and DINO); its PSNR, MSE and SSIM calculators are constructed as that ``__init__`` does.

``method`` "learned": the calculator is built by its own ``__init__``, unchanged. The weights it
would download are put where its loaders look first, random and seeded (the networks' code paths are
what is compared; pretrained weights cannot be had here): torchvision's SqueezeNet 1.1 checkpoint
and DINO's ViT-B/8 checkpoint in ``$TORCH_HOME/hub/checkpoints`` under their download names, DINO's
code (the user's clone of facebookresearch/dino) as ``torch.hub``'s cache of ``facebookresearch/dino:main``,
and a small random CLIP (the given tokenizer files) as the Hugging Face cache's snapshot of
``openai/clip-vit-large-patch14``. ``$TORCH_HOME`` and ``$HF_HOME`` are set by the caller to a
scratch folder; both sides read the same files."""

import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from evaluation.evaluate import calculate_metric, mask_decode
from evaluation.matrics_calculator import MetricsCalculator
from PIL import Image

CLIP_ID = "openai/clip-vit-large-patch14"
SQUEEZENET_FILE = "squeezenet1_1-b8a52dc0.pth"  # torchvision's SqueezeNet1_1_Weights.IMAGENET1K_V1
DINO_FILE = "dino_vitbase8_pretrain.pth"  # DINO's hubconf dino_vitb8


def pixel_calculator():
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
    from torchmetrics.regression import MeanSquaredError

    calc = MetricsCalculator.__new__(MetricsCalculator)
    calc.device = "cpu"
    calc.psnr_metric_calculator = PeakSignalNoiseRatio(data_range=1.0).to("cpu")
    calc.mse_metric_calculator = MeanSquaredError().to("cpu")
    calc.ssim_metric_calculator = StructuralSimilarityIndexMeasure(data_range=1.0).to("cpu")
    return calc


def seed_squeezenet(checkpoints: Path, seed: int) -> None:
    from torchvision.models import squeezenet1_1

    torch.manual_seed(seed)
    torch.save(squeezenet1_1(weights=None).state_dict(), checkpoints / SQUEEZENET_FILE)


def seed_dino(hub: Path, checkpoints: Path, dino_checkout: str, seed: int) -> None:
    code = hub / "facebookresearch_dino_main"
    if code.exists():
        shutil.rmtree(code)
    shutil.copytree(dino_checkout, code, ignore=shutil.ignore_patterns(".git"))
    sys.path.insert(0, str(code))
    import vision_transformer as vits

    torch.manual_seed(seed)
    model = vits.__dict__["vit_base"](patch_size=8, num_classes=0)
    with torch.no_grad():  # DINO's init leaves LayerNorms at 1 / 0 and biases at 0: perturb every tensor
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    sys.path.remove(str(code))
    sys.modules.pop("vision_transformer", None)
    torch.save(model.state_dict(), checkpoints / DINO_FILE)


def seed_clip(hf_home: Path, vocab: str, merges: str, seed: int) -> None:
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTokenizer

    snapshot = hf_home / "hub" / ("models--" + CLIP_ID.replace("/", "--"))
    if snapshot.exists():
        shutil.rmtree(snapshot)
    folder = snapshot / "snapshots" / ("0" * 40)
    folder.mkdir(parents=True)
    (snapshot / "refs").mkdir()
    (snapshot / "refs" / "main").write_text("0" * 40)
    tok = CLIPTokenizer(vocab, merges)
    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                         pad_token_id=1),
        vision_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=224, patch_size=14),
        projection_dim=32)
    model = CLIPModel(config)
    with torch.no_grad():  # one shared direction in both towers' outputs: random CLIPs score every pair near
        # cosine 0, which CLIPScore clamps to 0 and hides; this gives cosines around 0.5 that vary per pair
        common = torch.randn(64)
        model.text_model.final_layer_norm.bias.copy_(common)
        model.vision_model.post_layernorm.bias.copy_(common)
        model.text_projection.weight.copy_(model.visual_projection.weight)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    CLIPImageProcessor().save_pretrained(folder)  # its defaults are openai/clip-vit-large-patch14's


def learned_calculator(spec: dict):
    hub = Path(os.environ["TORCH_HOME"]) / "hub"
    checkpoints = hub / "checkpoints"
    checkpoints.mkdir(parents=True, exist_ok=True)
    seed_squeezenet(checkpoints, spec["seed"])
    seed_dino(hub, checkpoints, spec["dino_checkout"], spec["seed"] + 1)
    seed_clip(Path(os.environ["HF_HOME"]), spec["vocab"], spec["merges"], spec["seed"] + 2)
    return MetricsCalculator("cpu")


spec, out = json.loads(sys.argv[1]), sys.argv[2]
calc = learned_calculator(spec) if spec["method"] == "learned" else pixel_calculator()
rows, masks = [], {}
with torch.no_grad():
    for k, item in enumerate(spec["items"]):
        mask = mask_decode(item["rle"])
        masks[f"mask{k}"] = mask
        mask = mask[:, :, np.newaxis].repeat([3], axis=2)
        src, tgt = Image.open(item["src"]), Image.open(item["tgt"])
        row = {m: calculate_metric(calc, m, src, tgt, mask, mask, item.get("source_prompt", ""),
                                   item.get("target_prompt", "")) for m in spec["metrics"]}
        rows.append({m: v if isinstance(v, str) else float(np.asarray(v)) for m, v in row.items()})  # "nan" kept
np.savez(out[:-5] + ".npz", **masks)
with open(out, "w") as f:
    json.dump({"rows": rows}, f)
