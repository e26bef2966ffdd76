"""Runs locedit on the same model, image, prompts and settings as an official driver, in a fresh
process, with the same figures (:mod:`measure`). ``spec["run"]`` names a function in the peer's
module under ``bench/peers`` that does the work:
``locedit_run(spec, bundle, image) -> (latents, image uint8[, extra arrays])``.
"""

import importlib
import sys
from pathlib import Path

import measure
import torch

spec, out = measure.args()
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
peer = importlib.import_module(spec["peer"])

from locedit.diffusion.loading import load_model  # noqa: E402
from locedit.fileio import load_image  # noqa: E402

# libraries the locedit side imports lazily inside the work (the official drivers import theirs
# before it): imported here, so that their pages do not count as the method's working memory
for name in getattr(peer, "LOCEDIT_IMPORTS", ()):
    importlib.import_module(name)

torch.set_num_threads(spec.get("threads", torch.get_num_threads()))
bundle = load_model(spec["model"], spec["device"], "fp32")
with measure.Meter(bundle.unet, spec["device"], [bundle.unet, bundle.vae, bundle.text_encoder]) as meter:
    image = load_image(spec["image"]).to(bundle.device)
    latents, picture, *extra = peer.locedit_run(spec, bundle, image)
figures = meter.figures()
plain = meter.plain_seconds(bundle.unet)  # after the work: the controllers are uninstalled by then
ideal = sum(n * plain[b] for b, n in figures["unet_calls"].items())
figures.update(plain_unet_seconds=plain, unet_efficiency=ideal / figures["seconds"])
measure.write(out, figures, latents, picture, extra[0] if extra else None)
