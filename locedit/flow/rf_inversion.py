"""RF-Inversion (Rout et al., "Semantic Image Inversion and Editing using Rectified Stochastic
Differential Equations", ICLR 2025), as diffusers' community pipeline runs it
(``examples/community/pipeline_flux_rf_inversion.py``, ``RFInversionFluxPipeline.invert`` and
``__call__``), on FLUX:

- **controlled forward ODE** (Alg. 1, Eq. 8): from the image latent Y_0 = y_0 towards one noise draw
  y_1, dY = [u(Y) + gamma (u(Y | y_1) - u(Y))] dt with u the model's velocity on the inversion prompt
  (empty by default, distilled guidance 0) and u(Y | y_1) = (y_1 - Y) / (1 - t). As the pipeline
  does it: N + 1 schedule values s_0 = 1 > ... > s_N = 0 (the FLUX schedule with its shift), step i
  calls the model at t_i = i / (N + 1) - an unshifted level, not s_i - and moves by s_i - s_{i+1}
  (the schedule's gaps from the top);
- **controlled reverse ODE** (Alg. 2, Eq. 17): from the inverted latent, with the target prompt at
  ``guidance``, v = -u(X) and, for the steps from ``start`` to ``stop`` (shares of N, ``int`` as the
  pipeline rounds), v + eta ((y_0 - X) / s_i - v), moving by s_i - s_{i+1}.

With eta 1 over every step the reverse ODE lands on y_0 itself (tested). Noise: one draw in FLUX's
packed layout from a CPU generator seeded ``seed`` (the pipeline's ``torch.randn_like`` after
``torch.manual_seed(seed)`` draws the same). ``mask``: locedit's localisation, in neither the paper
nor the pipeline - after every reverse step the outside is put on the straight path between y_0 and
y_1 at the level reached, so it ends on y_0.
"""

from __future__ import annotations

import torch

from ..diffusion import flow
from ..errors import LoceditError
from .options import RFInversionOptions


@torch.no_grad()
def rf_invert(bundle, tokens: torch.Tensor, ids: torch.Tensor, text, gamma: float, guidance: float,
              sigmas: list[float], y1: torch.Tensor, progress=None) -> torch.Tensor:
    """Alg. 1 on packed ``tokens``: the inverted tokens."""
    from ..progress import track

    y = tokens
    n1 = len(sigmas)
    for i in track(progress, range(n1 - 1), "rf-inversion inversion"):
        t = i / n1
        u = bundle.velocity_tokens(y, ids, t, text, guidance)
        u_hat = u + gamma * ((y1 - y) / (1 - t) - u)
        y = y + u_hat * (sigmas[i] - sigmas[i + 1])
    return y


@torch.no_grad()
def rf_inversion_edit(bundle, x_src: torch.Tensor, source: str, target: str,
                      options: RFInversionOptions = RFInversionOptions(), seed: int = 0, progress=None,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """The edited latent (1, C, h, w) of ``x_src`` on a FLUX model (Alg. 1 then Alg. 2)."""
    from ..progress import track

    if bundle.family != "flux":
        raise LoceditError(f"rf-inversion runs on FLUX models (the pipeline is FLUX's), not {bundle.family}")
    o = options
    _, _, h, w = x_src.shape
    x = x_src.to(bundle.device, bundle.dtype)
    y0 = flow.pack(x)
    ids = flow.image_ids(h // 2, w // 2).to(x.device, x.dtype)
    sigmas = bundle.sigmas(o.steps, h, w).tolist()
    n = len(sigmas) - 1
    y1 = torch.randn(y0.shape, generator=torch.Generator().manual_seed(seed)).to(y0)
    inv_text = bundle.encode_text(["" if o.inversion_prompt == "empty" else source])
    tar = bundle.encode_text([target])
    z = rf_invert(bundle, y0, ids, inv_text, o.gamma, o.inversion_guidance, sigmas, y1)
    start, stop = int(o.start * n), min(int(o.stop * n), n)
    m = None if mask is None else flow.pack((mask.to(x) > 0.5).to(x).expand_as(x))
    for i in track(progress, range(n), "rf-inversion"):
        v = -bundle.velocity_tokens(z, ids, sigmas[i], tar, o.guidance)
        if start <= i < stop:
            v = v + o.eta * ((y0 - z) / sigmas[i] - v)
        z = z + v * (sigmas[i] - sigmas[i + 1])
        if m is not None:
            path = (1 - sigmas[i + 1]) * y0 + sigmas[i + 1] * y1
            z = path + m * (z - path)
    return flow.unpack(z, h, w)
