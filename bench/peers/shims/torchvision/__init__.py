"""A stand-in for the torchvision functions HelenMao/MAG-Edit and RainbowZhuu/MDE-Edit call
(``transforms.ToTensor`` on their mask images, ``transforms.Resize`` on MDE-Edit's attention
logits, ``utils.save_image`` for their outputs), put on the official side's path only. The PyPI torchvision wheels for the installed torch link the CUDA
libraries (``libc10_cuda.so``), so ``import torchvision`` fails against the CPU torch; no CPU build
is on the registries this project can reach. Each function reproduces torchvision's arithmetic for
the inputs those repositories pass (docs/peers.md lists this adjustment)."""

__version__ = "0.0.0+locedit.standin"  # PEP 440 (torchmetrics compares it): below every release
