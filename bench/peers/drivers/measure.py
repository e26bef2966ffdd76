"""Figures of one side-by-side run, taken the same way on both sides (stdlib and torch only: this
file is imported inside the official environments too).

- wall time of the work (image in, edited latents out; model loading excluded), synchronised on GPU;
- UNet calls by batch size (a forward pre-hook: it observes, it changes nothing);
- memory: the process's peak RSS during the work (Linux's high-water mark, reset when the work
  starts through /proc/self/clear_refs) and its RSS when the work starts (the loaded weights), so
  ``work_rss_gib`` = peak - start is what the method itself holds; on GPU
  ``torch.cuda.max_memory_allocated`` over the work.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections import Counter

import numpy as np
import torch


def _status_gib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20  # kB -> GiB
    raise RuntimeError(f"/proc/self/status has no {field}")


def rss_gib() -> float:
    """Current resident set size of this process, GiB (Linux)."""
    return _status_gib("VmRSS")


def reset_peak_rss() -> None:
    """Set the peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def touch(*nets) -> None:
    """Read every weight once, so that memory-mapped safetensors pages are resident before the work
    starts (otherwise the first UNet call pages the weights in and counts them as the method's)."""
    with torch.no_grad():
        for net in nets:
            for t in list(net.parameters()) + list(net.buffers()):
                t.float().sum()


class Meter:
    """``with Meter(unet, device, [unet, vae, text_encoder]) as m: work()``; then ``m.figures()``."""

    def __init__(self, unet, device: str, nets=(), sample_key: str = "sample",
                 context_key: str = "encoder_hidden_states"):
        touch(*nets)
        self.sample_key, self.context_key = sample_key, context_key  # the network's keyword names (FLUX: img, txt)
        self.device = torch.device(device)
        self.calls: Counter = Counter()
        self.shapes: dict = {}
        self._hook = unet.register_forward_pre_hook(self._count, with_kwargs=True)

    def _count(self, module, args, kwargs):
        sample = args[0] if args else kwargs[self.sample_key]
        b = int(sample.shape[0])
        self.calls[b] += 1
        if b not in self.shapes:
            ctx = kwargs.get(self.context_key, args[2] if len(args) > 2 else None)
            self.shapes[b] = (tuple(sample.shape), tuple(ctx.shape), sample.dtype)

    def plain_seconds(self, unet, repeats: int = 3) -> dict:
        """Seconds of one plain UNet call (no controller, no gradient; the best of ``repeats`` after
        a warm-up) at each batch size the work used: the denominator of UNet efficiency."""
        out = {}
        with torch.no_grad():
            for b, (shape, ctx_shape, dtype) in sorted(self.shapes.items()):
                z = torch.randn(shape, dtype=dtype, device=self.device)
                ctx = torch.randn(ctx_shape, dtype=dtype, device=self.device)
                best = float("inf")
                for k in range(repeats + 1):
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    unet(z, 500, encoder_hidden_states=ctx)
                    if self.device.type == "cuda":
                        torch.cuda.synchronize()
                    if k:
                        best = min(best, time.perf_counter() - t0)
                out[str(b)] = best
        return out

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        reset_peak_rss()
        self.base_rss = rss_gib()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        self.seconds = time.perf_counter() - self.t0
        self.peak_rss = _status_gib("VmHWM")
        self._hook.remove()
        return False

    def figures(self) -> dict:
        fig = {
            "seconds": self.seconds,
            "unet_calls": {str(k): v for k, v in sorted(self.calls.items())},
            "peak_rss_gib": self.peak_rss,
            "base_rss_gib": self.base_rss,
            "work_rss_gib": self.peak_rss - self.base_rss,
            "process_peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        if self.device.type == "cuda":
            fig["cuda_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        return fig


def write(out: str, figures: dict, latents: torch.Tensor, image: np.ndarray, extra: dict | None = None) -> None:
    """``latents``: (branches, 4, h, w) edited latents; ``image``: (H, W, 3) uint8 target image
    (either None when the side has no such output to compare: locedit's LIME localisation stops
    before the end of the schedule); ``extra``: further intermediate arrays both sides save under the
    same names (compared too)."""
    arrays = {k: np.asarray(v.detach().float().cpu().numpy() if isinstance(v, torch.Tensor) else v)
              for k, v in (extra or {}).items()}
    if latents is not None:
        arrays["latents"] = latents.detach().float().cpu().numpy()
    if image is not None:
        arrays["image"] = np.asarray(image, dtype=np.uint8)
    np.savez(out[:-5] + ".npz" if out.endswith(".json") else out + ".npz", **arrays)
    with open(out, "w") as f:
        json.dump(figures, f)


def args() -> tuple[dict, str]:
    return json.loads(sys.argv[1]), sys.argv[2]
