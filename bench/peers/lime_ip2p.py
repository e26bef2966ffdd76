"""LIME (Simsar et al., 2024; enisimsar/LIME): localized InstructPix2Pix, through its ``pipeline.py``
with the two calls of its ``lime.ipynb``: a localisation run (s_T 5.5, s_I 1.5; attention and
features recorded over steps 0-10 of 30, the last kept) and the edit (s_T 2.0, s_I 1.5) with the
mask and related tokens, its logits regularised over steps 0-26, both with the checkpoint's Euler
ancestral sampler and seed 42.

What cannot match, and what is compared instead: between the two calls the notebook finds the
mask with ``utils.py``, which clusters with cuML's k-means (CUDA only, one unseeded
initialisation) and tags verbs with NLTK's tagger (data downloaded at import; this machine cannot).
So the localisation's outcome is not compared; the rows are the two pipeline calls: the
localisation run's output (the sampler, both guidance scales and the recording controllers, which
must change nothing) with what k-means and the top points would be given (the attention map of the
instruction's tokens and the Gram matrix of the fused, L2-normalised features, which does not
depend on the order the layers are concatenated in), and the edit with the same mask on both sides
(the box around the square, at the notebook's ``out_res``), which checks the regularisation.

At other ``--steps`` the notebook's step ranges are scaled: [0, 10] and [0, 26] of 30 ->
[0, round(S / 3)] and [0, round(26 S / 30)]; locedit's official preset gives the same windows.
"""

from __future__ import annotations

from common import Patch, Peer

# locedit's k-means imports scikit-learn on first use; the driver imports it before the measured work,
# as the official driver imports its own libraries (the k-means itself is measured)
LOCEDIT_IMPORTS = ("sklearn.cluster",)
METHODS = {"lime-localize": "first call: localisation run (locedit stops after the windows' last step)",
           "lime-localize-full": "first call sampled to the end on both sides, its output compared",
           "lime-edit-mask": "second call: the edit, same mask"}
INSTRUCTION = "a green square"  # every word in the random model's vocabulary; "a" is its one stop word
SEED = 42


def ranges(steps: int) -> tuple[list[int], list[int]]:
    return [0, round(steps / 3)], [0, round(26 * steps / 30)]


def spec(steps: int) -> dict:
    loc, edit = ranges(steps)
    return {"instruction": INSTRUCTION, "seed": SEED, "localize_range": loc, "edit_range": edit,
            # utils.get_effective_tokens skips the start token and NLTK's English stop words; NLTK's list
            # cannot be downloaded here, so the driver is told the instruction's stop words
            "stop_words": ["a"]}


def patches(size: int, device: str, steps: int = 50) -> list[Patch]:
    out = []
    if size != 512:
        out += [
            Patch("pipeline.py", "attn.shape[1] < 64 ** 2", f"attn.shape[1] < {size // 8} ** 2",
                  why="maps and features kept below the 64x64 level (at 512 px)"),
            Patch("pipeline.py", "if res > 16:", f"if res > {size // 32}:",
                  why="logits regularised at levels finer than 16x16 (at 512 px)"),
        ]
    return out


PEER = Peer(
    name="lime",
    repository="https://github.com/enisimsar/LIME",
    requirements=("diffusers[torch]==0.32.2", "transformers==4.48.3", "scikit_learn==1.6.1", "nltk==3.9.1",
                  "matplotlib==3.10.0", "ipython"),
    adjustments=(
        ("opencv-python-headless==4.11.0.86", "their opencv-python 4.11.0.86 needs libGL; the headless build of the "
                                              "same release is the same cv2"),
    ),
    patches=patches,
    methods=tuple(METHODS),
    instruct=True,
    notes=("cudf, cuml, cugraph and the other RAPIDS packages (pypi.nvidia.com, CUDA 12 only) are not installed: "
           "only utils.py imports them, and the driver does not import utils.py (docs/peers.md: how a comparison "
           "is made)",),
)

DRIVER = "lime_official.py"


def locedit_run(spec: dict, bundle, image):
    """The same call with locedit's ``--preset official`` LIME options: the localisation run
    (:func:`locedit.instruct.lime.localize`) or the edit with the box mask."""
    import dataclasses

    import numpy as np
    import torch
    from PIL import Image

    from locedit.instruct import LIMEOptions
    from locedit.instruct.lime import lime_edit, localize
    from locedit.options import apply_preset

    # drop_verbs needs NLTK's tagger data (absent here); the instruction has no verb
    options = dataclasses.replace(apply_preset(LIMEOptions(), "official"), drop_verbs=False)
    steps, seed = spec["steps"], spec["seed"]
    extra = {}
    if spec["method"].startswith("lime-localize"):
        # lime-localize: locedit stops after the windows' last step (step 10 of 30), so there are no final
        # latents or image to compare, only what the region is found from; lime-localize-full samples the
        # whole schedule, as the code does, and compares its output too
        full = spec["method"] == "lime-localize-full"
        found = localize(bundle, image, spec["instruction"], steps, options, seed, run_all=full)
        if found.gram is not None:  # k-means ran on the Gram embedding (fewer pixels than channels)
            gram = found.gram.float()
        else:
            flat = found.features.reshape(found.features.shape[0], -1).T  # (pixels, channels), unit rows
            gram = flat @ flat.T
        extra = {"attention": found.attention, "feature_gram": gram}
        if not full:
            return None, None, extra
        z = found.latents
    else:
        m = torch.from_numpy(np.asarray(Image.open(spec["masks"][1]).convert("L"), dtype=np.float32) / 255)
        z = lime_edit(bundle, image, spec["instruction"], steps, options, seed, mask=(m > 0.5).float()[None, None]).latents
    with torch.no_grad():
        picture = bundle.decode_latents(z)[0]
    return z, (picture.permute(1, 2, 0).clamp(0, 1).cpu().numpy() * 255).astype(np.uint8), extra
