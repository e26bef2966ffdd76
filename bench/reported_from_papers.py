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


TABLES = {"spdinv-table1.json": spdinv_table1}


def main(argv=None) -> None:
    papers = Path((argv or sys.argv[1:] or [str(ROOT.parent / "shared" / "papers")])[0])
    for name, build in TABLES.items():
        (ROOT / "locedit" / "bench" / "reported" / name).write_text(json.dumps(build(papers), indent=1) + "\n")
        print(f"wrote locedit/bench/reported/{name}", file=sys.stderr)


if __name__ == "__main__":
    main()
