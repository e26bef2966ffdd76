"""Stand-in for invisible-watermark's ``imwatermark`` on the FLUX peers' official side: the reference
``flux/util.py`` builds a ``WatermarkEncoder`` at import (``embed_watermark``, applied to decoded
images only), and KV-Edit's ``models/kv_edit.py`` imports that module for ``load_flow_model``, which
the side-by-side run never calls (it builds the model from the shared weights and compares latents).
Setting the watermark is accepted; encoding an image fails loudly."""


class WatermarkEncoder:
    def set_watermark(self, kind, bits):
        self.kind, self.bits = kind, bits

    def encode(self, image, method):
        raise RuntimeError("the side-by-side run does not watermark images (bench/peers/shims/imwatermark)")
