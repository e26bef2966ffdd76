import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never download
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import numpy as np
import pytest
import torch
from PIL import Image

from locedit.diffusion import save_model
from locedit.diffusion.tiny import tiny_bundle


@pytest.fixture(scope="session")
def bundle():
    """Tiny random SD-structured model (64x64 images, 16x16 latents)."""
    return tiny_bundle(seed=0)


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory, bundle):
    """The tiny model saved in diffusers format (safetensors)."""
    return save_model(bundle, tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def image():
    """(1, 3, 64, 64): a red square on a gray background."""
    x = torch.full((1, 3, 64, 64), 0.5)
    x[:, :, 16:40, 20:44] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    return x


def write_png(path, array):
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path)
    return str(path)


@pytest.fixture
def scene_png(tmp_path):
    """A 48x80 (non-square) scene PNG and a matching mask PNG."""
    a = np.full((48, 80, 3), 128, np.uint8)
    a[10:30, 20:45] = [230, 30, 30]
    m = np.zeros((48, 80), np.uint8)
    m[8:32, 18:47] = 255
    return write_png(tmp_path / "scene.png", a), write_png(tmp_path / "mask.png", m)


@pytest.fixture(scope="session")
def instruct_bundle():
    """Tiny random InstructPix2Pix-shaped model (UNet with 8 input channels)."""
    from diffusers import UNet2DConditionModel

    from locedit.diffusion.model import finish_bundle
    from locedit.diffusion.tiny import tiny_components

    unet, vae, te, tok, cfg = tiny_components(seed=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        unet8 = UNet2DConditionModel.from_config({**unet.config, "in_channels": 8})
    return finish_bundle(unet8, vae, te, tok, cfg, "tiny-instruct", torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def instruct_dir(tmp_path_factory, instruct_bundle):
    return save_model(instruct_bundle, tmp_path_factory.mktemp("tiny-instruct"))


# the square scene's prompts and inversion options that act within three steps on the tiny models
# (a few optimiser steps; NMG's gradient scale at a size the tiny model's 3 steps stay finite with)
SRC = "a red square on the gray background"
TGT = "a blue square on the gray background"


def fast_inversion_options() -> dict:
    from locedit.inversion import AIDIOptions, NMGOptions, NullTextOptions, SPDOptions

    return {"null-text": NullTextOptions(inner_steps=2), "spd": SPDOptions(max_steps=2), "aidi": AIDIOptions(rounds=2),
            "nmg": NMGOptions(grad_scale=1.0)}


def square_box(side=64):
    """(1, 1, side, side) box around the square of the ``image`` fixture."""
    m = torch.zeros(1, 1, side, side)
    m[..., 16:40, 20:44] = 1
    return m
