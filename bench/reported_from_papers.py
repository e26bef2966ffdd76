"""Write locedit/bench/reported/*.json from the papers' own text (issue 35: published numbers as data).

    python bench/reported_from_papers.py ../shared/papers     # rewrites locedit/bench/reported/

Each table is read from the paper's text (a Markdown table), its rows named with locedit's names,
its values kept as printed (with the column's scale named), and written with the paper, table,
model, steps, guidance, subset and hardware the paper states. Only tables the text holds as a
table are here; docs/reported/README.md lists what is and what is not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = {"DDIM": "ddim", "NTI": "null-text", "NPI": "npi", "AIDI": "aidi", "NMG": "nmg", "DirectINV": "direct",
         "ProxEdit": "npi+proximal", "SPDInv": "spd", "P2P": "p2p", "MasaCtrl": "masactrl", "PNP": "pnp"}
# column header -> (metric key of locedit's bench, scale the paper prints it at)
SPDINV_COLUMNS = {"DINO": ("structure_distance", 1e3), "PSNR": ("bg_psnr", 1), "LPIPS": ("lpips_squeeze", 1e3),
                  "MSE": ("bg_mse", 1e4), "SSIM": ("bg_ssim", 1e2), "CLIP": ("clip_whole", 1),
                  "Inversion times(s)": ("inversion_seconds", 1)}


def markdown_table(text: str, caption_start: str) -> list[list[str]]:
    """The rows (cells stripped) of the first Markdown table after the line starting ``caption_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(caption_start))
    rows, seen = [], False
    for line in lines[start + 1:]:
        if line.startswith("|"):
            seen = True
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif seen:
            break
    return rows


def spdinv_table1(papers: Path) -> dict:
    rows = markdown_table((papers / "spdinv.txt").read_text(), "Table 1: Performance comparison")
    header = rows[0]
    columns = []
    for h in header[2:]:
        key = next(k for k in SPDINV_COLUMNS if h.startswith(k))
        columns.append(SPDINV_COLUMNS[key])
    out = []
    for cells in rows[1:]:
        values = {metric: {"value": float(v), "scale": scale} for (metric, scale), v in zip(columns, cells[2:])}
        out.append({"inversion": NAMES[cells[0]], "method": NAMES[cells[1]], "paper_names": cells[:2],
                    "values": values})
    return {
        "paper": "Li et al., Source Prompt Disentangled Inversion for Boosting Image Editability with Diffusion "
                 "Models (SPDInv), ECCV 2024",
        "table": "Table 1", "benchmark": "PIE-Bench", "subset": "all 700 images", "model": "CompVis/stable-diffusion-v1-4",
        "steps": 50, "guidance": 7.5, "hardware": "RTX 3090 (times)",
        "notes": "values as printed: a metric's value divided by its scale is the raw figure (DINO x1e3, LPIPS x1e3, "
                 "MSE x1e4, SSIM x1e2); 'npi+proximal' is ProxEdit (locedit: --inversion npi --proximal 0.7 "
                 "--inversion-guidance 400, docs/conformance.md)",
        "rows": out,
    }


MAG_EDIT_ROWS = {"Blended LD [1]": ("blended", "default"), "Diffedit [7]": ("diffedit", "default"),
                 "MasaCtrl [25]": ("masactrl", "default"), "PnP [25]": ("pnp", "default"),
                 "P2P [8]": ("p2p", "null-text"), "P2P+Mask": ("p2p-mask", "null-text"),
                 "P2P+Re-weight": ("p2p-reweight", "null-text"), "P2P+Ours": ("mag-edit", "null-text")}
MAG_EDIT_BENCHMARKS = (("mag-bench", "MAG-Bench", "its 200 images (the paper's own, multi-object scenes)"),
                       ("pie", "PIE-Bench", "the localized edits: colour, texture, object (the paper names no count)"),
                       ("ted", "TEd-Bench", "the localized edits: colour, texture, object (the paper names no count)"))


def tsv_table(text: str, header_start: str) -> list[list[str]]:
    """The tab-separated rows after the line starting ``header_start`` up to the first blank line."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        rows.append([c.strip() for c in line.split("\t")])
    return rows


def mag_edit_table1(papers: Path, which: int) -> dict:
    """MAG-Edit's Table 1, one benchmark's two columns (``which``: 0 MAG-Bench, 1 PIE-Bench, 2 TEd-Bench)."""
    rows = tsv_table((papers / "mag-edit.txt").read_text(), "Method\tCLIP Score")
    _, name, subset = MAG_EDIT_BENCHMARKS[which]
    out = []
    for cells in rows:
        method, inversion = MAG_EDIT_ROWS[cells[0]]
        clip, dino = cells[1 + 2 * which], cells[2 + 2 * which]
        out.append({"inversion": inversion, "method": method, "paper_names": [cells[0]],
                    "values": {"clip_box": {"value": float(clip), "scale": 1},
                               "structure_distance_box": {"value": float(dino), "scale": 1}}})
    return {
        "paper": "Mao et al., MAG-Edit: Localized Image Editing in Complex Scenarios via Mask-Based Attention-Adjusted "
                 "Guidance, ACM MM 2024",
        "table": f"Table 1 ({name})", "benchmark": name, "subset": subset, "model": "CompVis/stable-diffusion-v1-4",
        "steps": 50, "guidance": 7.5, "hardware": "one NVIDIA A100",
        "notes": "CLIP score and DINO-ViT self-similarity distance on the edit's bounding-box crop (the paper's "
                 "'we use the bounding boxes to crop the editing regions'; locedit: clip_box, structure_distance_box, "
                 "the box around the item's mask). P2P rows on null-text inversion (the paper follows P2P); the "
                 "inversion of Blended LD, DiffEdit, MasaCtrl and PnP is not named ('default': each method's own). "
                 "Steps and guidance are P2P's, which the paper follows; it states neither. 'p2p-reweight' is the "
                 "paper's P2P+Re-weight (the target token's cross-attention x10 inside the mask), not a locedit "
                 "bench method.",
        "rows": out,
    }


MDE_ROWS = {"NTI+P2P": ("p2p", "null-text"), "Ours": ("mde-edit", "default")}


def mde_edit_table1(papers: Path, which: int) -> dict:
    """MDE-Edit's Table 1, one of its two column groups (``which``: 0 non-overlapping objects, 1 overlapping);
    the rows of methods locedit does not have (CDS, GnR, OIR) are named in the notes, not kept."""
    lines = (papers / "mde-edit.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("CLIP SCORE"))
    rows, left_out = [], []
    for line in lines[start + 1:]:
        if not line.strip():
            break
        cells = line.split()
        name, values = cells[0], [float(v) for v in cells[-6:]]
        if name not in MDE_ROWS:
            left_out.append(name)
            continue
        method, inversion = MDE_ROWS[name]
        clip, lpips, ssim = values[3 * which: 3 * which + 3]
        rows.append({"inversion": inversion, "method": method, "paper_names": [name],
                     "values": {"clip_whole": {"value": clip, "scale": 1e-2}, "lpips_alex": {"value": lpips, "scale": 1},
                                "bg_ssim": {"value": ssim, "scale": 1}}})
    subset = ("multi-object, non-overlapping", "multi-object, overlapping")[which]
    return {
        "paper": "Zhu et al., MDE-Edit: Masked Dual-Editing for Multi-Object Image Editing via Diffusion Models, 2025",
        "table": f"Table 1 ({subset})", "benchmark": "OIR-bench, LoMOE-bench and MS-COCO multi-object images",
        "subset": subset, "model": "CompVis/stable-diffusion-v1-4", "steps": 50, "guidance": 7.5,
        "hardware": "one NVIDIA A6000",
        "notes": "CLIP score printed as a cosine (locedit's clip_whole is 100 x cosine: scale 0.01); BG-LPIPS (the "
                 "network unnamed: lpips' default AlexNet, locedit's lpips_alex on the unedited part) and BG-SSIM "
                 "(bg_ssim). MDE-Edit's inversion is not named ('default': locedit's null-text); guidance is not "
                 "stated (P2P's 7.5 assumed). Left out, not methods of locedit: " + ", ".join(left_out) + ".",
        "rows": rows,
    }


LOCINV_ROWS = {"DiffEdit [11]": ("diffedit", "default"), "NTI [37]": ("p2p", "null-text"),
               "PnP [52]": ("pnp", "default"), "MasaCtrl [5]": ("masactrl", "default"),
               "LocInv (Seg)": ("locinv", "default"), "InstructP2P [4]": ("ip2p", "default"),
               "BLD (Seg) [2]": ("blended", "default")}
# LocInv's Table 2 columns: full image LPIPS, SSIM, PSNR, DINO-Sim; background MSE, LPIPS, SSIM, PSNR; CLIP edited
LOCINV_COLUMNS = {4: ("bg_mse", 1), 5: ("lpips_alex", 1), 6: ("bg_ssim", 1), 7: ("bg_psnr", 1), 8: ("clip_whole", 1)}


def locinv_table2(papers: Path, which: int) -> dict:
    """LocInv's Table 2, one of its two blocks (``which``: 0 multi-object, 1 single-object), the columns
    locedit's bench computes; rows of methods locedit does not have named in the notes."""
    lines = (papers / "locinv.txt").read_text().splitlines()
    title = ("Multi-Object Image Editing", "Single-Object Image Editing")[which]
    start = next(i for i, line in enumerate(lines) if line.startswith(title))
    rows, left_out = [], []
    for line in lines[start + 1:]:
        cells = [c.strip() for c in line.split("|")]
        if line.startswith(("Multi-Object", "Single-Object")) or len(cells) < 10:
            break
        cells = [c for c in cells if c]
        if cells[0] in ("Freezing SD", "Finetuning SD"):
            cells = cells[1:]
        name, values = cells[0], [float(v) for v in cells[1:10]]
        if name not in LOCINV_ROWS:
            left_out.append(name)
            continue
        method, inversion = LOCINV_ROWS[name]
        rows.append({"inversion": inversion, "method": method, "paper_names": [name],
                     "values": {m: {"value": values[k], "scale": sc} for k, (m, sc) in LOCINV_COLUMNS.items()}})
    subset = ("multi-object images (6 editing tasks)", "single-object images (7 editing tasks)")[which]
    return {
        "paper": "Tang et al., LocInv: Localization-aware Inversion for Text-Guided Image Editing, CVPR 2024 AI4CC "
                 "workshop", "table": f"Table 2 ({title})", "benchmark": "COCO-Edit (315 MS-COCO images)",
        "subset": subset, "model": "CompVis/stable-diffusion-v1-4", "steps": 50, "guidance": 7.5,
        "hardware": "R6000 GPUs",
        "notes": "The columns locedit's bench computes: background MSE, LPIPS (the network unnamed: lpips' default "
                 "AlexNet, lpips_alex), SSIM, PSNR, and the CLIP score of the edit (clip_whole). Not mapped: the "
                 "full-image LPIPS, SSIM, PSNR and DINO-Sim columns (the bench scores the unedited part) and the "
                 "source images' CLIP score. NTI is NTI + P2P; LocInv (Seg) and BLD (Seg) take the segmentation "
                 "masks (locedit's locinv and blended with the item's mask). Steps and guidance are P2P's, which "
                 "the paper follows. Left out, not locedit's methods or their box-prior variants: "
                 + ", ".join(left_out) + ".",
        "rows": rows,
    }


TABLES = {"spdinv-table1.json": spdinv_table1,
          **{f"locinv-table2-{key}.json": (lambda papers, k=k: locinv_table2(papers, k))
             for k, key in enumerate(("multi", "single"))},
          **{f"mde-edit-table1-{key}.json": (lambda papers, k=k: mde_edit_table1(papers, k))
             for k, key in enumerate(("non-overlap", "overlap"))},
          **{f"mag-edit-table1-{key}.json": (lambda papers, k=k: mag_edit_table1(papers, k))
             for k, (key, _, _) in enumerate(MAG_EDIT_BENCHMARKS)}}


def main(argv=None) -> None:
    papers = Path((argv or sys.argv[1:] or [str(ROOT.parent / "shared" / "papers")])[0])
    for name, build in TABLES.items():
        (ROOT / "locedit" / "bench" / "reported" / name).write_text(json.dumps(build(papers), indent=1) + "\n")
        print(f"wrote locedit/bench/reported/{name}", file=sys.stderr)


if __name__ == "__main__":
    main()
