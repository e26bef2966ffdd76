"""torchvision.models in the stand-in: no network is provided. torchmetrics imports the module when
torchvision is present (its LPIPS backbones); PnPInversion's pixel metrics never build one, and any
use fails with an AttributeError naming the missing constructor."""
