"""Weight quantisation of a flow model's transformer through torchao (issue 33, item 7): FLUX.1-dev's
transformer is 11.9 B parameters, 22.2 GiB in bf16 - a 24 GB card's whole memory - and 11.1 GiB with
int8 weights. ``quantize(bundle, "int8")`` applies torchao's ``Int8WeightOnlyConfig`` to every linear
layer of the transformer in place (activations stay in the model's dtype); the text encoders are
left alone (they can leave the accelerator instead: ``FlowBundle.offload_text``)."""

from __future__ import annotations

from ..errors import LoceditError

MODES = ("int8",)


def quantize(bundle, mode: str) -> None:
    """Quantise ``bundle.transformer``'s linear weights in place (``bundle``: a FlowBundle or the
    pipeline it wraps; ``mode``: one of :data:`MODES`)."""
    if mode not in MODES:
        raise LoceditError(f"--quantize must be one of {', '.join(MODES)}, got {mode!r}")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise LoceditError("--quantize needs torchao: pip install 'locedit[quant]' (torchao==0.18.0)") from None
    quantize_(bundle.transformer, Int8WeightOnlyConfig())


def weight_bytes(module) -> int:
    """Bytes the module's parameters hold (int8 weights count one byte each, their scales as stored)."""
    total = 0
    for p in module.parameters():
        data = p.data
        parts = [getattr(data, n) for n in getattr(data, "tensor_data_names", ())] or [data]  # torchao: data, scales
        total += sum(t.numel() * t.element_size() for t in parts)
    return total
