"""Memory of the flow editors on FLUX.1-dev and SD3.5-large at 1024 px (issue 33, item 7), from the
real architectures with random weights: parameter counts exact (the full models built on the meta
device, no memory), one transformer call's working memory measured on a reduced-depth model at the
full width (one block of each kind: activations are freed block by block in inference, so one call's
peak does not grow with depth), the editors' caches counted from their shapes.

    python bench/flow_memory.py params                       # exact parameter counts (seconds)
    python bench/flow_memory.py run --sizes 256,512,1024     # one fresh process per (family, size, rows)
    python bench/flow_memory.py table                        # the table of docs/flow.md

``run`` measures on this machine's CPU in bf16: the process's peak RSS during one call less its RSS
before it (weights read beforehand), which counts the tensors the call allocates; on a GPU the same
call's ``torch.cuda.max_memory_allocated`` less the weights is the figure to put in its place (not
measured: no accelerator was lent). Figures go to ``docs/bench/flow-memory-cpu.jsonl``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "bench" / "flow-memory-cpu.jsonl"
GIB = 2 ** 30

FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
SD35_LARGE = dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                  num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                  pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm")
TEXT = {"flux": 512, "sd3": 77 + 256}  # text tokens in the joint sequence (T5 512 / CLIP 77 + T5 256)
ROWS = {"flux": (1,), "sd3": (2, 4), "vae": (1,)}  # batch rows the editors use (SD3: CFG pairs, FlowEdit's four)


def _models(reduced: bool):
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    flux = dict(FLUX_DEV, **({"num_layers": 1, "num_single_layers": 1} if reduced else {}))
    sd3 = dict(SD35_LARGE, **({"num_layers": 1} if reduced else {}))
    return {"flux": (FluxTransformer2DModel, flux), "sd3": (SD3Transformer2DModel, sd3)}


def params() -> dict:
    """Exact parameter counts of the full transformers and the text encoders and VAE (meta device)."""
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    def count(m):
        return sum(p.numel() for p in m.parameters())

    out = {}
    with torch.device("meta"):
        for family, (cls, cfg) in _models(False).items():
            out[f"{family}_transformer"] = count(cls(**cfg))
        out["t5_xxl"] = count(T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240,
                                                       num_layers=24, num_heads=64, feed_forward_proj="gated-gelu")))
        clip_l = CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                                projection_dim=768)
        out["clip_l"] = count(CLIPTextModel(clip_l))
        out["clip_l_proj"] = count(CLIPTextModelWithProjection(clip_l))
        out["clip_g_proj"] = count(CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            projection_dim=1280)))
        out["vae16"] = count(AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4,
                                           up_block_types=("UpDecoderBlock2D",) * 4,
                                           block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                                           latent_channels=16))
    return out


def measure(family: str, size: int, rows: int) -> dict:
    """One call of the reduced-depth transformer at ``size`` px with ``rows`` batch rows, bf16, CPU."""
    import torch

    sys.path.insert(0, str(ROOT / "bench" / "peers" / "drivers"))
    import measure as M

    torch.manual_seed(0)
    if family == "vae":  # FLUX's / SD3's 16-channel VAE (the same architecture), one decode
        from diffusers import AutoencoderKL

        vae = AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                            latent_channels=16).to(torch.bfloat16).eval()
        M.touch(vae)
        z = torch.randn(rows, 16, size // 8, size // 8, dtype=torch.bfloat16)
        with torch.no_grad():
            M.reset_peak_rss()
            base = M.rss_gib()
            import time

            t0 = time.perf_counter()
            vae.decode(z)
            seconds = time.perf_counter() - t0
            peak = M._status_gib("VmHWM")
        return {"family": "vae", "size": size, "rows": rows, "work_gib": peak - base, "seconds": seconds,
                "threads": torch.get_num_threads(), "blocks": "decoder"}
    cls, cfg = _models(True)[family]
    model = cls(**cfg).to(torch.bfloat16).eval()
    M.touch(model)
    latent = size // 8
    text = torch.randn(rows, TEXT[family], cfg["joint_attention_dim"], dtype=torch.bfloat16)
    pooled = torch.randn(rows, cfg["pooled_projection_dim"], dtype=torch.bfloat16)
    if family == "flux":
        n = (latent // 2) ** 2
        ids = torch.zeros(n, 3)
        ids[:, 1], ids[:, 2] = torch.arange(n) // (latent // 2), torch.arange(n) % (latent // 2)
        kwargs = dict(hidden_states=torch.randn(rows, n, cfg["in_channels"], dtype=torch.bfloat16),
                      timestep=torch.full((rows,), 0.5), guidance=torch.full((rows,), 3.5),
                      pooled_projections=pooled, encoder_hidden_states=text, txt_ids=torch.zeros(TEXT[family], 3),
                      img_ids=ids, return_dict=False)
    else:
        kwargs = dict(hidden_states=torch.randn(rows, cfg["in_channels"], latent, latent, dtype=torch.bfloat16),
                      timestep=torch.full((rows,), 500.0), encoder_hidden_states=text, pooled_projections=pooled,
                      return_dict=False)
    with torch.no_grad():
        M.reset_peak_rss()
        base = M.rss_gib()
        import time

        t0 = time.perf_counter()
        model(**kwargs)
        seconds = time.perf_counter() - t0
        peak = M._status_gib("VmHWM")
    return {"family": family, "size": size, "rows": rows, "work_gib": peak - base, "seconds": seconds,
            "threads": torch.get_num_threads(), "blocks": "1 double + 1 single" if family == "flux" else "1 joint"}


def int8_bytes() -> dict:
    """Bytes of each full transformer with torchao's int8 weight-only linears (one byte a weight, a bf16
    scale per output row, biases and every other parameter in bf16), counted on the meta device."""
    import torch

    out = {}
    with torch.device("meta"):
        for family, (cls, cfg) in _models(False).items():
            model, total, linear = cls(**cfg), 0, set()
            for m in model.modules():
                if isinstance(m, torch.nn.Linear):
                    total += m.weight.numel() + 2 * m.out_features
                    linear.add(id(m.weight))
            total += 2 * sum(p.numel() for p in model.parameters() if id(p) not in linear)
            out[f"{family}_transformer"] = total
    return out


def caches() -> dict:
    """Host-memory caches of the editors at 1024 px on FLUX.1-dev, bf16, counted from their shapes
    (the authors' code and locedit both keep them in CPU memory): RF-Solver-Edit's shared values (single
    blocks 20-37, both calls of each of ``inject`` 20 steps; text and image tokens), FireFlow's (blocks
    0-37, one call a step, ``inject`` 1), KV-Edit's image keys and values (57 blocks, 28 - 4 steps)."""
    tokens, text, width, b = 4096, 512, 3072, 2
    v_all = (tokens + text) * width * b
    return {"flowedit": 0.0, "rf-solver-edit": 18 * 2 * 20 * v_all / GIB, "fireflow-edit": 38 * 1 * v_all / GIB,
            "kv-edit": 57 * 24 * 2 * tokens * width * b / GIB, "rf-inversion": 0.0, "uniedit-flow": 0.0}


CARD_GIB = 24e9 / GIB  # a "24 GB" card: 22.4 GiB


def table(rows: list[dict], p: dict) -> str:
    work = {(r["family"], r["size"], r["rows"]): r["work_gib"] for r in rows}
    w = {k: v * 2 / GIB for k, v in p.items()}  # bf16
    q = {k: v / GIB for k, v in int8_bytes().items()}
    decode = work.get(("vae", 1024, 1))
    flux_text = w["t5_xxl"] + w["clip_l"]
    sd_text = w["t5_xxl"] + w["clip_l_proj"] + w["clip_g_proj"]
    lines = ["| 1024 px, text encoders off the accelerator | transformer weights | VAE | one call's working memory "
             "(rows) | VAE decode | peak on the accelerator | fits a 24 GB card (22.4 GiB) |",
             "|---|---:|---:|---:|---:|---:|---|"]
    settings = [("FLUX.1-dev, bf16", w["flux_transformer"], ("flux", 1)),
                ("FLUX.1-dev, int8 weights (`--quantize int8`)", q["flux_transformer"], ("flux", 1)),
                ("SD3.5-large, bf16, FlowEdit (4 rows)", w["sd3_transformer"], ("sd3", 4)),
                ("SD3.5-large, bf16, one guided branch (2 rows)", w["sd3_transformer"], ("sd3", 2))]
    for name, weights, (family, n) in settings:
        call = work.get((family, 1024, n))
        if call is None or decode is None:
            lines.append(f"| {name} | {weights:.1f} GiB | {w['vae16']:.2f} GiB | not measured | | | |")
            continue
        peak = weights + w["vae16"] + max(call, decode)
        lines.append(f"| {name} | {weights:.1f} GiB | {w['vae16']:.2f} GiB | {call:.2f} GiB ({n}) | {decode:.2f} GiB | "
                     f"{peak:.1f} GiB | {'yes' if peak < CARD_GIB else 'no'} |")
    lines += ["", f"Text encoders in bf16 (kept on the CPU with `--offload-text`; on the accelerator they add this): "
              f"FLUX {flux_text:.1f} GiB (T5-XXL {w['t5_xxl']:.1f} + CLIP-L {w['clip_l']:.2f}), SD3.5 {sd_text:.1f} GiB."]
    lines += ["", "Host-memory caches at 1024 px on FLUX.1-dev (bf16, CPU RAM, as the authors' code keeps them): " +
              ", ".join(f"{k} {v:.1f} GiB" for k, v in caches().items())]
    lines += ["", "Measured on this machine's CPU (bf16, one thread; reduced depth at full width): " +
              "; ".join(f"{r['family']} {r['size']} px x{r['rows']}: {r['work_gib']:.2f} GiB in {r['seconds']:.0f} s"
                        for r in rows)]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["params", "run", "one", "table"])
    p.add_argument("--sizes", default="256,512,1024")
    p.add_argument("--family", default="flux,sd3,vae")
    p.add_argument("--rows", type=int, default=0, help="with 'one': the batch rows")
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    if args.what == "params":
        print(json.dumps(params(), indent=2))
        return 0
    if args.what == "one":
        print(json.dumps(measure(args.family, int(args.sizes), args.rows)))
        return 0
    out = Path(args.out)
    if args.what == "run":
        out.parent.mkdir(parents=True, exist_ok=True)
        done = {(r["family"], r["size"], r["rows"]) for r in map(json.loads, out.read_text().splitlines())} \
            if out.exists() else set()
        for family in args.family.split(","):
            for size in map(int, args.sizes.split(",")):
                for rows in ROWS[family]:
                    if (family, size, rows) in done:
                        continue
                    proc = subprocess.run([sys.executable, __file__, "one", "--family", family, "--sizes", str(size),
                                           "--rows", str(rows)], capture_output=True, text=True)
                    if proc.returncode:
                        print(f"{family} {size} x{rows}: failed: {proc.stderr.strip().splitlines()[-1:]}",
                              file=sys.stderr)
                        continue
                    line = proc.stdout.strip().splitlines()[-1]
                    with open(out, "a") as f:
                        f.write(line + "\n")
                    print(line, file=sys.stderr)
        return 0
    rows = [json.loads(x) for x in out.read_text().splitlines()] if out.exists() else []
    print(table(rows, params()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
