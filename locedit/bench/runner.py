"""Benchmark runner: every method on every item, one JSONL row per (item, method), resumable.

Rows are appended one line per write and flushed to disk, so a killed run loses at most the row
it was computing; on restart, rows already on disk are skipped, a torn last line is cut off, and
duplicates can never be written. With ``accelerate launch`` (or torchrun), each rank takes every
WORLD_SIZE-th item and writes its own ``results.rankR.jsonl``; :func:`load_rows` merges them.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from ..errors import LoceditError
from ..imaging import Fit
from ..metrics import pie_masked, psnr, mse, shapes_metrics, ssim
from ..spec import DEFAULT_INVERSION
from .datasets import EditItem

from ..instruct import INSTRUCT_METHODS
from ..methods import METHODS
from .names import INSTRUCT, MASK_SUFFIX, bench_methods, flow_editor  # noqa: F401 (re-exported)


@dataclass
class BenchConfig:
    steps: int = 50
    guidance: float = 7.5
    inversion: str = DEFAULT_INVERSION
    preset: str | None = None  # "paper" | "official" | None (locedit's defaults)
    seed: int = 0
    fit: str = "pad"
    learned: "LearnedMetrics | None" = None


LEARNED_METRICS = ("lpips-alex", "lpips-squeeze", "clip", "dino")
OWN_INVERSION = "default"  # --inversion default: each method on its own paper's (Method.inversion)


@dataclass
class LearnedMetrics:
    """The pretrained networks the learned metrics need (any may be None = not computed)."""

    lpips: dict | None = None  # net name -> LPIPS
    clip: tuple | None = None  # (CLIPModel, tokenizer)
    dino: object | None = None  # ViTModel (PIE-Bench: dino-vitb8)
    raw_255: bool = True  # PIE-Bench's 0..255 DINO input quirk

    @classmethod
    def load(cls, names: list[str], clip_name: str = "openai/clip-vit-large-patch14",
             dino_name: str = "facebook/dino-vitb8") -> "LearnedMetrics":
        from ..metrics.learned import load_clip, load_dino, load_lpips

        bad = [n for n in names if n not in LEARNED_METRICS]
        if bad:
            raise LoceditError(f"unknown metric {bad[0]!r}; choose from pixel, shapes, {', '.join(LEARNED_METRICS)}")
        lp = {n.split("-")[1]: load_lpips(n.split("-")[1]) for n in names if n.startswith("lpips")}
        return cls(lpips=lp or None, clip=load_clip(clip_name) if "clip" in names else None,
                   dino=load_dino(dino_name) if "dino" in names else None)

    def compute(self, item, edited: torch.Tensor) -> dict[str, float]:
        from ..metrics.learned import clip_score, dino_structure_distance

        src, out = item.image.float(), edited.float()
        res = {}
        masked_src = pie_masked(src, item.mask) if item.mask is not None else src
        masked_out = pie_masked(out, item.mask) if item.mask is not None else out
        for net, model in (self.lpips or {}).items():
            res[f"lpips_{net}"] = float(model(masked_src, masked_out)[0])
        if self.clip is not None and item.target_prompt:
            model, tok = self.clip
            res["clip_whole"] = float(clip_score(model, tok, out, [item.target_prompt])[0])
            if item.mask is not None:
                res["clip_edited"] = float(clip_score(model, tok, out, [item.target_prompt], mask=item.mask)[0])
        if self.dino is not None:
            res["structure_distance"] = float(dino_structure_distance(self.dino, src, out, self.raw_255)[0])
        if item.mask is not None:  # MAG-Edit's protocol (its Table 1): both networks on the edit's box
            x0, y0, x1, y1 = edit_box(item.mask)
            if self.clip is not None and item.target_prompt:
                res["clip_box"] = float(clip_score(*self.clip, out, [item.target_prompt], box=(x0, y0, x1, y1))[0])
            if self.dino is not None:
                crop = (..., slice(y0, y1), slice(x0, x1))
                res["structure_distance_box"] = float(dino_structure_distance(self.dino, src[crop], out[crop],
                                                                              self.raw_255)[0])
        return res


def edit_box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1), exclusive ends: the box around the edited region of ``mask`` (1, 1, H, W) that
    MAG-Edit crops its CLIP score and DINO distance to ("we use the bounding boxes to crop the
    editing regions"). The outermost pixel ring is left out - PIE-Bench's decoder sets it on every
    mask, which would make every box the whole image; an empty interior gives the whole image."""
    m = mask[0, 0] > 0.5
    h, w = m.shape
    ys, xs = torch.nonzero(m[1:-1, 1:-1], as_tuple=True)
    if len(ys) == 0:
        return 0, 0, w, h
    return int(xs.min()) + 1, int(ys.min()) + 1, int(xs.max()) + 2, int(ys.max()) + 2


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) from the launcher's environment (accelerate / torchrun), else (0, 1)."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def results_path(out: Path, rank: int, world: int) -> Path:
    return out / ("results.jsonl" if world == 1 else f"results.rank{rank}.jsonl")


def _repair(path: Path) -> None:
    """Cut a torn last line (a run killed mid-write)."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        keep = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(keep)


def load_rows(out: Path, malformed: list | None = None) -> list[dict]:
    """All complete rows of every rank's results file, one per (id, method): the last one written
    (a retried row supersedes the failed one), in the order each key first appeared. Lines that
    are not JSON objects with an ``id`` and a ``method`` are skipped and appended to ``malformed``
    as ``(file name, line number)``."""
    rows: dict[tuple, dict] = {}
    for path in sorted(Path(out).glob("results*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not isinstance(row, dict) or "id" not in row or "method" not in row:
                if malformed is not None:
                    malformed.append((path.name, n))
                continue
            rows[(str(row["id"]), row["method"])] = row
    return list(rows.values())


RUN_FILE = "run.json"


def check_settings(out: Path, settings: dict) -> None:
    """Store the run's settings beside its rows, or refuse to resume a run made with other ones."""
    path = out / RUN_FILE
    if path.exists():
        try:
            before = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            raise LoceditError(f"{path} is not readable JSON; remove it or use another --out") from None
        changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
        if changed:
            k, (a, b) = next(iter(changed.items()))
            raise LoceditError(f"{out} holds a run with {k}={a!r}, not {b!r}: resume it with the same settings "
                               f"or use another --out ({len(changed)} setting(s) differ)")
        return
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(settings, indent=2) + "\n")
    os.replace(tmp, path)


def append_row(path: Path, row: dict) -> None:
    line = (json.dumps(row) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def as_saved(image: torch.Tensor) -> torch.Tensor:
    """``image`` as its 8-bit PNG (:func:`locedit.fileio.save_png`) reads back: clamped, rounded to
    the nearest of 256 levels."""
    return (image.float().clamp(0, 1) * 255).round() / 255


def _save(image: torch.Tensor, path: Path, metadata: dict | None = None) -> str:
    """One image of the bench, atomically, with its metadata (the method, the item, the run's settings)."""
    from ..fileio import save_png

    save_png(image, path, metadata or {})
    return str(path)


def run_method(method: str, item: EditItem, t2i, ip2p, config: BenchConfig,
               progress: Callable | None = None) -> tuple[torch.Tensor, int, dict]:
    """Edit one item with one method; returns (image at the item's size, UNet calls, extra figures
    such as LIME's RoI IoU with the item's mask). ``progress``: the edit's own steps."""
    bundle = ip2p if method in INSTRUCT else t2i
    if bundle is None:
        raise LoceditError(f"method {method!r} needs {'an instruct' if method in INSTRUCT else 'a text-to-image'} model")
    calls0 = bundle.unet_calls
    entry = flow_editor(method)
    if entry is not None:
        return run_flow_editor(entry, method, item, bundle, config, progress), bundle.unet_calls - calls0, {}
    if method not in INSTRUCT_METHODS:
        from .. import api

        spec, files = item_spec(method, item, config, bundle.name)
        edited = api.edit(spec, files=files, bundle=bundle, progress=progress).edited
        return edited.float().cpu(), bundle.unet_calls - calls0, {}
    from ..options import preset

    h, w = item.image.shape[-2:]
    fit = Fit.plan(h, w, bundle.image_size, config.fit)
    m = INSTRUCT_METHODS[method]
    res = m.run(bundle, fit.to_model(item.image).to(bundle.device), item.instruction, config.steps,
                preset(m.Options, config.preset), config.seed, progress=progress)
    out = bundle.decode_latents(res.latents)
    extra: dict = {}
    if res.roi is not None and item.mask is not None:
        side = res.roi.shape[-1]
        gt = F.interpolate(fit.to_model(item.mask, binary=True), size=(side, side), mode="area")[0, 0] > 0.5
        roi = res.roi.cpu()
        extra["roi_iou"] = float((roi & gt).sum() / (roi | gt).sum().clamp_min(1))
    return fit.from_model(out.float().cpu()), bundle.unet_calls - calls0, extra


def run_flow_editor(entry, method: str, item: EditItem, bundle, config: BenchConfig,
                    progress: Callable | None = None) -> torch.Tensor:
    """One item with a flow editor at its defaults (its paper's or its authors' steps and scales: the
    bench's --steps, --guidance, --inversion and --preset are the UNet methods'), inside the item's
    mask for a ``-mask`` name and for KV-Edit (:func:`locedit.api.flow_edit`); the image at the
    item's size."""
    from .. import api
    from ..spec import FlowSpec

    files, mask = {"IMAGE": item.image}, None
    if method.endswith(MASK_SUFFIX) or entry.needs_mask:
        if item.mask is None:
            raise LoceditError(f"item {item.id} has no mask for {method}")
        files["MASK"], mask = item.mask, "MASK"
    spec = FlowSpec("IMAGE", item.source_prompt, item.target_prompt, bundle.name, method=entry.name, mask=mask,
                    seed=config.seed, fit=config.fit)
    return api.flow_edit(spec, files=files, bundle=bundle, progress=progress).edited


def item_spec(bench_name: str, item: EditItem, config: BenchConfig, model: str):
    """One bench row as an :class:`~locedit.spec.EditSpec` of a registry method, with the item's image
    and masks in memory under the names it gives: the item's inputs the method uses (regions,
    attributes, source regions, blend words; the mask only for the "-mask" variant, where it replaces
    the blend words)."""
    from ..options import preset
    from ..spec import EditSpec

    name = bench_name[: -len(MASK_SUFFIX)] if bench_name.endswith(MASK_SUFFIX) else bench_name
    m = METHODS[name]
    options = preset(m.Options, config.preset)
    files, extra = {"IMAGE": item.image}, {}
    if m.takes_inversion(options):
        from ..inversion import INVERSIONS

        inversion = m.inversion if config.inversion == OWN_INVERSION else config.inversion
        extra.update(inversion=inversion, inversion_options=preset(INVERSIONS[inversion].Options, config.preset))
    if bench_name.endswith(MASK_SUFFIX) or "mask" in m.needs:
        if item.mask is None:
            raise LoceditError(f"item {item.id} has no mask for {bench_name}")
        files["MASK"] = item.mask
        extra["masks"] = ("MASK",)
    elif "blend_words" in m.uses and item.blend_words:
        extra["blend_words"] = tuple(item.blend_words)
    regions = item.source_regions if "source_regions" in m.uses else item.regions if "regions" in m.uses else []
    for k, (word, mask) in enumerate(regions, start=1):
        files[f"REGION{k}"] = mask
    if regions:
        extra["regions"] = tuple(f"{word}=REGION{k}" for k, (word, _) in enumerate(regions, start=1))
    spec = EditSpec(item.target_prompt, image="IMAGE", source=item.source_prompt, method=name, options=options,
                    preset=config.preset, model=model, steps=config.steps, guidance=config.guidance, seed=config.seed,
                    fit=config.fit, **extra)
    return spec, files


def item_metrics(item: EditItem, edited: torch.Tensor) -> dict[str, float]:
    """Pixel metrics on the unedited part (PIE-Bench convention) and, with a ground truth, the
    shapes-world metrics and the oracle."""
    src = item.image.float()
    out: dict[str, float] = {}
    if item.mask is not None:
        a, b = pie_masked(src, item.mask), pie_masked(edited, item.mask)
        out.update(bg_psnr=float(psnr(a, b)[0]), bg_mse=float(mse(a, b)[0]), bg_ssim=float(ssim(a, b)[0]))
    else:
        out.update(psnr=float(psnr(src, edited)[0]), ssim=float(ssim(src, edited)[0]))
    if item.target_image is not None and item.mask is not None:
        ok = None
        if "edit" in item.extra:
            from ..world.oracle import change_seen, read_scene

            arr = (edited[0].permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype("uint8")
            ok = change_seen(read_scene(arr), item.extra["edit"])
        out.update(shapes_metrics(edited[0], src[0], item.target_image[0].float(), item.mask[0, 0] > 0.5, ok))
    return {k: (v if math.isfinite(v) else (100.0 if v > 0 else v)) if not math.isnan(v) else float("nan")
            for k, v in out.items()}


def run_settings(config: BenchConfig, t2i=None, ip2p=None, dataset: str = "") -> dict:
    from .. import __version__

    return {"dataset": dataset, "model": getattr(t2i, "name", None), "instruct_model": getattr(ip2p, "name", None),
            "steps": config.steps, "guidance": config.guidance, "inversion": config.inversion, "preset": config.preset,
            "seed": config.seed, "fit": config.fit, "locedit_version": __version__}


def run_bench(items: Iterable[EditItem], methods: list[str], out: str | Path, t2i=None, ip2p=None,
              config: BenchConfig = BenchConfig(), limit: int | None = None,
              progress: Callable | None = None, retry: bool = True, dataset: str = "") -> Path:
    """Run ``methods`` on ``items`` into ``out``; resumable. A resumed run retries the rows that
    failed unless ``retry`` is False, and is refused if its settings differ from the stored ones."""
    known = bench_methods()
    bad = [m for m in methods if m not in known]
    if bad:
        raise LoceditError(f"unknown method {bad[0]!r}; choose from {', '.join(known)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    check_settings(out, run_settings(config, t2i, ip2p, dataset))
    rank, world = rank_and_world()
    path = results_path(out, rank, world)
    _repair(path)
    done = {(r["id"], r["method"]) for r in load_rows(out) if not (retry and "error" in r)}
    items = list(items)[: limit if limit else None]
    mine = [it for k, it in enumerate(items) if k % world == rank]
    todo = [(it, m) for it in mine for m in methods if (it.id, m) not in done]
    work = todo if progress is None else progress(todo, f"bench rank {rank}")
    for k, (item, method) in enumerate(work, start=1):
        # each edit's own bars (inversion, editing) name the item and the method, so a long first item shows
        steps = None if progress is None else (
            lambda iterable, desc, tag=f"[{k}/{len(todo)}] {item.id} {method}": progress(iterable, f"{tag}: {desc}"))
        src_png = out / "images" / "source" / f"{item.id}.png"
        if not src_png.exists():
            _save(item.image, src_png)
        if item.target_image is not None and not (out / "images" / "target" / f"{item.id}.png").exists():
            _save(item.target_image, out / "images" / "target" / f"{item.id}.png")
        t0 = time.perf_counter()
        try:
            edited, calls, extra = run_method(method, item, t2i, ip2p, config, steps)
            error = None
        except LoceditError as exc:
            edited, calls, extra, error = None, 0, {}, str(exc)
        seconds = time.perf_counter() - t0
        row = {"id": item.id, "method": method, "edit_type": item.edit_type, "seconds": round(seconds, 4),
               "unet_calls": calls, "rank": rank}
        row.update({k: v for k, v in (("source_prompt", item.source_prompt), ("target_prompt", item.target_prompt),
                                      ("instruction", item.instruction)) if v})
        if edited is not None:
            meta = {"id": item.id, "method": method, **run_settings(config, t2i, ip2p, dataset),
                    **{k: v for k, v in row.items() if k.endswith("prompt") or k == "instruction"}}
            row["output"] = os.path.relpath(_save(edited, out / "images" / method / f"{item.id}.png", meta), out)
            saved = as_saved(edited)  # the metrics score the image file, as PIE-Bench's evaluation does
            row.update(item_metrics(item, saved))
            row.update(extra)
            if config.learned is not None:
                row.update(config.learned.compute(item, saved))
        else:
            row["error"] = error
        append_row(path, row)
    return out
