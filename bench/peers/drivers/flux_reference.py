"""diffusers' FLUX transformer weights in Black Forest Labs' reference layout (the ``flux`` package the
RF-Solver-Edit, FireFlow and KV-Edit repositories carry): torch only, imported inside the official
environment by ``flux_official.py`` and by the tests."""

import torch


def reference_state(sd: dict, n_double: int, n_single: int) -> dict:
    """diffusers' FluxTransformer2DModel state dict -> the reference ``Flux`` one."""
    out = {}

    def cp(dst, src):
        out[dst + ".weight"] = sd[src + ".weight"]
        if src + ".bias" in sd:
            out[dst + ".bias"] = sd[src + ".bias"]

    def cat(dst, srcs):
        out[dst + ".weight"] = torch.cat([sd[s + ".weight"] for s in srcs])
        out[dst + ".bias"] = torch.cat([sd[s + ".bias"] for s in srcs])

    cp("img_in", "x_embedder")
    cp("txt_in", "context_embedder")
    for ref, ours in (("time_in", "timestep_embedder"), ("vector_in", "text_embedder"),
                      ("guidance_in", "guidance_embedder")):
        if f"time_text_embed.{ours}.linear_1.weight" in sd:
            cp(f"{ref}.in_layer", f"time_text_embed.{ours}.linear_1")
            cp(f"{ref}.out_layer", f"time_text_embed.{ours}.linear_2")
    for i in range(n_double):
        p, q = f"transformer_blocks.{i}.", f"double_blocks.{i}."
        cp(q + "img_mod.lin", p + "norm1.linear")
        cp(q + "txt_mod.lin", p + "norm1_context.linear")
        cat(q + "img_attn.qkv", [p + "attn.to_q", p + "attn.to_k", p + "attn.to_v"])
        cat(q + "txt_attn.qkv", [p + "attn.add_q_proj", p + "attn.add_k_proj", p + "attn.add_v_proj"])
        out[q + "img_attn.norm.query_norm.scale"] = sd[p + "attn.norm_q.weight"]
        out[q + "img_attn.norm.key_norm.scale"] = sd[p + "attn.norm_k.weight"]
        out[q + "txt_attn.norm.query_norm.scale"] = sd[p + "attn.norm_added_q.weight"]
        out[q + "txt_attn.norm.key_norm.scale"] = sd[p + "attn.norm_added_k.weight"]
        cp(q + "img_attn.proj", p + "attn.to_out.0")
        cp(q + "txt_attn.proj", p + "attn.to_add_out")
        cp(q + "img_mlp.0", p + "ff.net.0.proj")
        cp(q + "img_mlp.2", p + "ff.net.2")
        cp(q + "txt_mlp.0", p + "ff_context.net.0.proj")
        cp(q + "txt_mlp.2", p + "ff_context.net.2")
    for i in range(n_single):
        p, q = f"single_transformer_blocks.{i}.", f"single_blocks.{i}."
        cp(q + "modulation.lin", p + "norm.linear")
        cat(q + "linear1", [p + "attn.to_q", p + "attn.to_k", p + "attn.to_v", p + "proj_mlp"])
        cp(q + "linear2", p + "proj_out")
        out[q + "norm.query_norm.scale"] = sd[p + "attn.norm_q.weight"]
        out[q + "norm.key_norm.scale"] = sd[p + "attn.norm_k.weight"]
    cp("final_layer.linear", "proj_out")
    for kind in ("weight", "bias"):
        scale, shift = sd["norm_out.linear." + kind].chunk(2)
        out["final_layer.adaLN_modulation.1." + kind] = torch.cat([shift, scale])
    return out
