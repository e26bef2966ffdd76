"""locedit's side of a FLUX editor's side-by-side run: the model folder loaded through
``locedit.diffusion.load_model``, T5 padded to 512 tokens (what the reference code hard-codes), the
editor from :data:`locedit.flow.FLOW_EDITORS` with the run's options, the mask (if any) taken to the
latent grid by the editor's own rule; :mod:`measure`'s figures over the edit."""

import measure
import numpy as np
import torch

spec, out = measure.args()
torch.set_num_threads(spec.get("threads", torch.get_num_threads()))

from locedit.diffusion import load_model  # noqa: E402
from locedit.flow import FLOW_EDITORS  # noqa: E402

bundle = load_model(spec["model"], spec["device"], "fp32")
# FLUX: the 512 T5 tokens the reference code hard-codes; SD3 without T5: the zero-token length of the official
# side's diffusers release (flux_run.py's FlowEdit notes)
bundle.max_sequence_length = 512 if bundle.family == "flux" else spec.get("t5_absent_length")
inputs = np.load(spec["inputs"])
x = torch.from_numpy(inputs["x_sd3" if bundle.family == "sd3" else "x"])
if spec["editor"] == "model":  # one plain transformer call (the weights as locedit reads them)
    from locedit.diffusion import flow

    meter = measure.Meter(bundle.transformer, spec["device"], [bundle.transformer], sample_key="hidden_states")
    text = bundle.encode_text([spec["source"]])
    with meter, torch.no_grad():
        v = bundle.velocity_tokens(flow.pack(x), flow.image_ids(x.shape[-2] // 2, x.shape[-1] // 2), 0.5, text, 3.5)
    measure.write(out, meter.figures(), v, None)
    raise SystemExit(0)
entry = FLOW_EDITORS[spec["editor"]]
options = entry.Options(**spec["options"])
mask = None
if spec.get("mask"):
    mask = entry.latent_mask(torch.from_numpy(inputs["mask"]), *x.shape[-2:])
meter = measure.Meter(bundle.transformer, spec["device"], [bundle.transformer], sample_key="hidden_states")
with meter:
    z = entry.run(bundle, x, spec["source"], spec["target"], options, seed=spec["seed"], mask=mask)
measure.write(out, meter.figures(), z, None)
