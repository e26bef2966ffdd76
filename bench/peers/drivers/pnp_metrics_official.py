"""PnPInversion's PIE-Bench evaluation code (``evaluation/evaluate.py``'s ``mask_decode`` and
``calculate_metric``, ``evaluation/matrics_calculator.py``'s ``MetricsCalculator``) on the given image
pairs, inside its environment. The calculator is built without its ``__init__`` (which downloads
CLIP, LPIPS's network and DINO); its PSNR, MSE and SSIM calculators are constructed as that
``__init__`` does. Each pair is evaluated as ``evaluate.py`` does: the mask decoded, repeated over
the three channels, ``calculate_metric(calculator, metric, src, tgt, mask, mask, ...)``."""

import json
import sys

import numpy as np
import torch
from evaluation.evaluate import calculate_metric, mask_decode
from evaluation.matrics_calculator import MetricsCalculator
from PIL import Image
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchmetrics.regression import MeanSquaredError

spec, out = json.loads(sys.argv[1]), sys.argv[2]
calc = MetricsCalculator.__new__(MetricsCalculator)
calc.device = "cpu"
calc.psnr_metric_calculator = PeakSignalNoiseRatio(data_range=1.0).to("cpu")
calc.mse_metric_calculator = MeanSquaredError().to("cpu")
calc.ssim_metric_calculator = StructuralSimilarityIndexMeasure(data_range=1.0).to("cpu")
rows, masks = [], {}
with torch.no_grad():
    for k, item in enumerate(spec["items"]):
        mask = mask_decode(item["rle"])
        masks[f"mask{k}"] = mask
        mask = mask[:, :, np.newaxis].repeat([3], axis=2)
        src, tgt = Image.open(item["src"]), Image.open(item["tgt"])
        rows.append({m: calculate_metric(calc, m, src, tgt, mask, mask, "", "") for m in spec["metrics"]})
np.savez(out[:-5] + ".npz", **masks)
with open(out, "w") as f:
    json.dump({"rows": rows}, f)
