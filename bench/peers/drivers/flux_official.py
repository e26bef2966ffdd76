"""Runs a flow editor's official code inside its environment, on the random-weight model that
locedit's side loads, and records :mod:`measure`'s figures: RF-Solver-Edit, FireFlow and KV-Edit on
Black Forest Labs' reference ``flux`` package (each repository with its own copy; UniEdit-Flow too), FlowEdit on the
diffusers pipeline of the shared folder (FLUX or SD3; its ``FlowEditFLUX`` / ``FlowEditSD3`` as its
``run_script.py`` calls them, prompts encoded by the pipeline in its own environment), RF-Inversion
by diffusers' community ``RFInversionFluxPipeline`` (``invert`` then ``__call__``).

The weights: the diffusers folder's ``transformer/diffusion_pytorch_model.safetensors`` renamed to
the reference layout (:func:`reference_state`, the inverse of diffusers' FLUX conversion: fused
q/k/v and q/k/v/MLP projections, the final norm's (scale, shift) halves swapped back to (shift,
scale)) and loaded strictly into the repository's own ``Flux`` / ``Flux_kv`` class. The text
encodings (T5 states padded to 512 tokens, CLIP pooled) are the shared inputs' - the text encoders
are not what is compared. Then the repository's own functions run as its ``edit.py`` / demo call
them: ``denoise`` / ``denoise_fireflow`` with their ``info`` dicts, ``Flux_kv_edit`` /
``Flux_kv_edit_inf`` ``forward`` (the objects are built without their ``__init__``, which loads
FLUX.1-dev from the hub).

Observation only: a forward pre-hook counts transformer calls.
"""

import inspect
import math
import tempfile
import types

import measure
import numpy as np
import torch
from flux_reference import reference_state

spec, out = measure.args()
torch.set_num_threads(spec.get("threads", torch.get_num_threads()))


def load_model(cls, params_cls):
    import json

    from safetensors.torch import load_file

    folder = spec["model"] + "/transformer"
    cfg = json.load(open(folder + "/config.json"))
    heads, head_dim = cfg["num_attention_heads"], cfg["attention_head_dim"]
    params = params_cls(in_channels=cfg["in_channels"], vec_in_dim=cfg["pooled_projection_dim"],
                        context_in_dim=cfg["joint_attention_dim"], hidden_size=heads * head_dim, mlp_ratio=4.0,
                        num_heads=heads, depth=cfg["num_layers"], depth_single_blocks=cfg["num_single_layers"],
                        axes_dim=list(cfg["axes_dims_rope"]), theta=10000, qkv_bias=True,
                        guidance_embed=cfg["guidance_embeds"])
    model = cls(params)
    model.load_state_dict(reference_state(load_file(folder + "/diffusion_pytorch_model.safetensors"),
                                          cfg["num_layers"], cfg["num_single_layers"]), strict=True)
    return model.eval()


inputs = np.load(spec["inputs"])
x = torch.from_numpy(inputs["x_sd3" if spec.get("family") == "sd3" else "x"])
b, c, h, w = x.shape
packed = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(b, (h // 2) * (w // 2), 4 * c)
img_ids = torch.zeros(h // 2, w // 2, 3)
img_ids[..., 1] += torch.arange(h // 2)[:, None]
img_ids[..., 2] += torch.arange(w // 2)[None, :]
img_ids = img_ids.reshape(1, -1, 3)


def inp(which: str, img=None) -> dict:
    txt = torch.from_numpy(inputs[f"{which}_states"])
    return {"img": packed.clone() if img is None else img, "img_ids": img_ids, "txt": txt,
            "txt_ids": torch.zeros(1, txt.shape[1], 3), "vec": torch.from_numpy(inputs[f"{which}_pooled"])}


def unpacked(z: torch.Tensor) -> torch.Tensor:
    return z.reshape(1, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(1, c, h, w)


o = spec["options"]
method = spec["method"]
with torch.inference_mode():
    if method == "model":  # one plain call of the repository's own Flux class: the weights as it reads them
        from flux.model import Flux, FluxParams

        model = load_model(Flux, FluxParams)
        call = dict(img=packed, img_ids=img_ids, txt=torch.from_numpy(inputs["src_states"]),
                    txt_ids=torch.zeros(1, inputs["src_states"].shape[1], 3),
                    y=torch.from_numpy(inputs["src_pooled"]), timesteps=torch.full((1,), 0.5),
                    guidance=torch.full((1,), 3.5))
        if "info" in inspect.signature(model.forward).parameters:  # the editors' copies thread an info dict
            call["info"] = {"inject": False, "inverse": False, "t": 0.5, "second_order": False, "feature": {}}
        meter = measure.Meter(model, spec["device"], [model], sample_key="img", context_key="txt")
        with meter:
            v = model(**call)
        result = (v[0] if isinstance(v, tuple) else v)
    elif method == "flowedit":  # its run_script.py's call, on the pipeline the shared folder loads as
        from diffusers import FluxPipeline, StableDiffusion3Pipeline
        from FlowEdit_utils import FlowEditFLUX, FlowEditSD3

        sd3 = spec.get("family") == "sd3"
        # the random SD3 has no T5 encoder: diffusers' documented way to drop it is to pass None
        pipe = (StableDiffusion3Pipeline.from_pretrained(spec["model"], text_encoder_3=None, tokenizer_3=None) if sd3
                else FluxPipeline.from_pretrained(spec["model"]))
        pipe.set_progress_bar_config(disable=True)
        meter = measure.Meter(pipe.transformer, spec["device"], [pipe.transformer], sample_key="hidden_states")
        torch.manual_seed(spec["seed"])  # run_script.py seeds the global generator per experiment
        with meter:
            result = (FlowEditSD3 if sd3 else FlowEditFLUX)(
                pipe, pipe.scheduler, x, spec["source"], spec["target"], "", o["steps"], o["n_avg"],
                o["src_guidance"], o["tar_guidance"], o["n_min"], o["n_max"])
    elif method == "rf-inversion":  # the community pipeline's invert() then __call__, as its docstring example
        from pipeline_flux_rf_inversion import RFInversionFluxPipeline

        pipe = RFInversionFluxPipeline.from_pretrained(spec["model"])
        pipe.set_progress_bar_config(disable=True)
        pipe.encode_image = lambda image, dtype=None, height=None, width=None, **kw: (x.clone(), None)  # shared latent
        size = dict(height=h * pipe.vae_scale_factor, width=w * pipe.vae_scale_factor)
        meter = measure.Meter(pipe.transformer, spec["device"], [pipe.transformer], sample_key="hidden_states")
        torch.manual_seed(spec["seed"])
        with meter:
            inv, lat, ids = pipe.invert(image=None, source_prompt="", source_guidance_scale=o["inversion_guidance"],
                                        num_inversion_steps=o["steps"], gamma=o["gamma"], **size)
            edited = pipe(prompt=spec["target"], inverted_latents=inv, image_latents=lat, latent_image_ids=ids,
                          eta=o["eta"], start_timestep=o["start"], stop_timestep=o["stop"],
                          num_inference_steps=o["steps"], guidance_scale=o["guidance"], output_type="latent", **size).images
        result = unpacked(edited)
    elif method == "uniedit-flow":  # edit.py --sampling_strategy uniedit: edit_uniedit up (empty prompt), then down
        from flux.model import Flux, FluxParams
        from flux.sampling import edit_uniedit, get_schedule

        model = load_model(Flux, FluxParams)
        info = {"feature_path": tempfile.mkdtemp(), "feature": {}, "inject_step": 0, "start_layer_index": 0,
                "end_layer_index": 0, "reuse_v": 1, "editing_strategy": "replace_v", "qkv_ratio": [1.0, 1.0, 1.0],
                "alpha": o["alpha"], "omega": o["omega"], "zero_init": o.get("zero_init", False)}
        target = inp("tar")
        source = inp("src")
        target.update(src_txt=source["txt"], src_txt_ids=source["txt_ids"], src_vec=source["vec"])
        meter = measure.Meter(model, spec["device"], [model], sample_key="img", context_key="txt")
        with meter:
            timesteps = get_schedule(o["steps"], packed.shape[1], shift=True)
            z, info = edit_uniedit(model, **inp("empty"), timesteps=timesteps, guidance=1, inverse=True, info=info)
            target["img"] = z
            z, _ = edit_uniedit(model, **target, timesteps=timesteps, guidance=o["guidance"], inverse=False, info=info)
        result = unpacked(z)
    elif method in ("rf-solver-edit", "fireflow-edit"):
        from flux.model import Flux, FluxParams
        from flux.sampling import get_schedule

        model = load_model(Flux, FluxParams)
        info = {"feature_path": tempfile.mkdtemp(), "feature": {}, "inject_step": o["inject"]}
        if method == "fireflow-edit":
            from flux.sampling import denoise_fireflow as denoise

            info.update(start_layer_index=o["single_from"], end_layer_index=o["single_to"], reuse_v=1,
                        editing_strategy="replace_v", qkv_ratio=[1.0, 1.0, 1.0])
        else:
            from flux.sampling import denoise
        meter = measure.Meter(model, spec["device"], [model], sample_key="img", context_key="txt")
        with meter:
            timesteps = get_schedule(o["steps"], packed.shape[1], shift=True)
            z, info = denoise(model, **inp("src"), timesteps=timesteps, guidance=1, inverse=True, info=info)
            z, _ = denoise(model, **inp("tar", z), timesteps=timesteps, guidance=o["guidance"], inverse=False,
                           info=info)
        result = unpacked(z)
    elif method.startswith("kv-edit"):
        from flux.model import Flux_kv, FluxParams
        from models.kv_edit import Flux_kv_edit, Flux_kv_edit_inf

        cls = Flux_kv_edit_inf if o["inversion_free"] else Flux_kv_edit
        editor = cls.__new__(cls)
        torch.nn.Module.__init__(editor)
        editor.device, editor.name = spec["device"], "flux-dev"
        editor.model = load_model(Flux_kv, FluxParams)
        opts = types.SimpleNamespace(height=8 * h, width=8 * w, denoise_num_steps=o["steps"], skip_step=o["skip"],
                                     inversion_guidance=o["inversion_guidance"], denoise_guidance=o["guidance"],
                                     re_init=o["re_init"], attn_mask=o["attn_mask"], attn_scale=o["attn_scale"],
                                     seed=spec["seed"])
        mask = torch.from_numpy(inputs["mask"])
        meter = measure.Meter(editor.model, spec["device"], [editor.model], sample_key="img", context_key="txt")
        torch.manual_seed(spec["seed"])  # the demo seeds the global generator before the edit (re_init draws)
        with meter:
            z = editor(inp("src"), inp("tar"), mask, opts)
        result = z
    else:
        raise SystemExit(f"unknown method {method}")

assert math.isfinite(float(result.abs().max()))
measure.write(out, meter.figures(), result, None)
