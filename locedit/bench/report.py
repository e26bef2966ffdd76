"""Reports from a bench folder: averages per method and edit type, plots, an HTML gallery.

Averages skip NaN values and count them (the PIE-Bench reference code averages nothing; users
average per-image rows skipping NaN, which is what this does, reporting how many were skipped).
"""

from __future__ import annotations

import html
import math
from collections import defaultdict
from pathlib import Path

from ..errors import LoceditError
from .runner import load_rows

_NOT_METRICS = {"id", "method", "edit_type", "output", "rank", "error", "source_prompt", "target_prompt", "instruction"}

# one name per metric, with what it measures and its unit (a header of the report)
METRICS = {
    "bg_psnr": "PSNR of the unedited part, PIE-Bench convention (full frame times 1 - mask) [dB]",
    "bg_mse": "MSE of the unedited part, PIE-Bench convention",
    "bg_ssim": "SSIM of the unedited part, PIE-Bench convention",
    "psnr": "PSNR against the source, whole image [dB]",
    "ssim": "SSIM against the source, whole image",
    "outside_psnr": "PSNR outside the edited objects, against the source [dB]",
    "outside_ssim": "SSIM outside the edited objects, against the source",
    "outside_mse": "MSE outside the edited objects, against the source",
    "inside_psnr_to_target": "PSNR inside the edited objects, against the exact target [dB]",
    "inside_mse_to_target": "MSE inside the edited objects, against the exact target",
    "psnr_to_target": "PSNR against the exact target, whole image [dB]",
    "oracle_success": "oracle sees the edit [fraction]",
    "roi_iou": "LIME region of interest: IoU with the edited region",
    "seconds": "time per edit [s]",
    "unet_calls": "UNet evaluations per edit",
    "lpips_alex": "LPIPS (AlexNet), unedited part", "lpips_squeeze": "LPIPS (SqueezeNet), unedited part",
    "clip_whole": "CLIP score, whole image", "clip_edited": "CLIP score, edited part",
    "structure_distance": "DINO structure distance",
    "clip_box": "CLIP score, the edit's box (MAG-Edit)", "structure_distance_box": "DINO structure distance, the edit's box (MAG-Edit)",
}
# names written by earlier versions of the runner -> the one name
RENAMED = {"background_psnr": "outside_psnr", "background_ssim": "outside_ssim", "outside_mse_to_source": "outside_mse"}


def canonical(rows: list[dict]) -> list[dict]:
    """Rows with the metrics of earlier runner versions under their current names."""
    return [{RENAMED.get(k, k): v for k, v in r.items()} for r in rows]


def label(metric: str) -> str:
    return METRICS.get(metric, metric)


def summarise(rows: list[dict]) -> dict[tuple[str, str], dict[str, tuple[float, int, int]]]:
    """(method, edit type or "all") -> metric -> (mean over finite values, count, NaN count)."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], "all")].append(r)
        groups[(r["method"], r.get("edit_type", "unknown"))].append(r)
    out = {}
    for key, rs in groups.items():
        metrics = sorted({k for r in rs for k, v in r.items() if k not in _NOT_METRICS and isinstance(v, (int, float))})
        stats = {}
        for m in metrics:
            vals = [float(r[m]) for r in rs if m in r and isinstance(r[m], (int, float))]
            finite = [v for v in vals if not math.isnan(v)]
            stats[m] = (sum(finite) / len(finite) if finite else float("nan"), len(finite), len(vals) - len(finite))
        stats["errors"] = (float(sum(1 for r in rs if "error" in r)), len(rs), 0)
        out[key] = stats
    return out


TABLE_WIDTH = 6  # metric columns per table: a report's tables stay readable


def metric_groups(summary, edit_types: bool = True) -> list[list[str]]:
    """The metrics of ``summary`` in :data:`METRICS`' order (others after), in tables of at most
    :data:`TABLE_WIDTH` columns."""
    keys = [k for k in summary if edit_types or k[1] == "all"]
    found = {m for k in keys for m in summary[k] if m != "errors"}
    order = [m for m in METRICS if m in found] + sorted(found - set(METRICS))
    return [order[i: i + TABLE_WIDTH] for i in range(0, len(order), TABLE_WIDTH)] or [[]]


def markdown_tables(summary, edit_types: bool = True) -> str:
    """:func:`markdown_table` for each group of :func:`metric_groups`, one after another."""
    return "\n\n".join(markdown_table(summary, edit_types, group) for group in metric_groups(summary, edit_types))


def markdown_table(summary, edit_types: bool = True, metrics: list[str] | None = None) -> str:
    """Rows per method (and edit type), a column per metric (all of them, or ``metrics``), errors last."""
    keys = sorted(k for k in summary if edit_types or k[1] == "all")
    if metrics is None:
        metrics = sorted({m for k in keys for m in summary[k] if m != "errors"})
    lines = ["| method | edit type | n | " + " | ".join(f"{label(m)} (`{m}`)" for m in metrics) + " | errors |",
             "|---|---|---:|" + "---:|" * len(metrics) + "---:|"]
    for k in keys:
        s = summary[k]
        n = max((c for _, c, _ in s.values()), default=0)
        cells = []
        for m in metrics:
            if m in s:
                mean, count, nans = s[m]
                cell = "nan" if math.isnan(mean) else f"{mean:.4g}"
                cells.append(cell + (f" ({nans} NaN)" if nans else ""))
            else:
                cells.append("")
        lines.append(f"| {k[0]} | {k[1]} | {n} | " + " | ".join(cells) + f" | {int(s['errors'][0])} |")
    return "\n".join(lines)


def plots(summary, out: Path) -> list[Path]:
    """One bar chart per metric (methods on the x axis, overall means)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = sorted({k[0] for k in summary})
    metrics = sorted({m for k in summary for m in summary[k] if m != "errors"})
    written = []
    for m in metrics:
        vals = [summary.get((meth, "all"), {}).get(m, (float("nan"), 0, 0))[0] for meth in methods]
        fig, ax = plt.subplots(figsize=(max(3, 1.2 * len(methods)), 3))
        ax.bar(methods, [0 if math.isnan(v) else v for v in vals], color="#4477aa")
        ax.set_title(label(m), fontsize=9)
        ax.set_xlabel("method")
        ax.set_ylabel(m)
        ax.tick_params(axis="x", labelrotation=30)
        fig.tight_layout()
        path = out / f"plot_{m}.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        written.append(path)
    return written


def gallery(rows: list[dict], out: Path) -> Path:
    """gallery.html: per item, source | each method's edit | target (when known)."""
    by_item: dict[str, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        by_item[r["id"]][r["method"]] = r
    methods = sorted({r["method"] for r in rows})
    has_target = any((out / "images" / "target" / f"{i}.png").exists() for i in by_item)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in methods)
    parts = ["<!doctype html><meta charset='utf-8'><title>locedit gallery</title>",
             "<style>img{width:160px;image-rendering:pixelated}td,th{padding:4px;font:12px sans-serif}</style>",
             f"<table><tr><th>item</th><th>source</th>{head}{'<th>target</th>' if has_target else ''}</tr>"]
    for item in sorted(by_item):
        first = next(iter(by_item[item].values()))
        prompts = " &rarr; ".join(html.escape(first[k]) for k in ("source_prompt", "target_prompt") if first.get(k))
        if first.get("instruction"):
            prompts += (f"<br><i>{html.escape(first['instruction'])}</i>")
        cells = [f"<td>{html.escape(item)}<br>{prompts}</td>",
                 f"<td><img src='images/source/{html.escape(item)}.png'></td>"]
        for m in methods:
            r = by_item[item].get(m)
            if r and "output" in r:
                cells.append(f"<td><img src='{html.escape(r['output'])}'></td>")
            else:
                cells.append(f"<td>{html.escape(r.get('error', '')) if r else ''}</td>")
        if has_target:
            cells.append(f"<td><img src='images/target/{html.escape(item)}.png'></td>")
        parts.append("<tr>" + "".join(cells) + "</tr>")
    parts.append("</table>")
    path = out / "gallery.html"
    path.write_text("\n".join(parts))
    return path


def write_report(folder: str | Path, against_table: str | None = None) -> dict[str, Path]:
    """report.md, plots and gallery of a bench folder; ``against_table`` (``paper:table``, one of
    :func:`reported_tables`) adds the run beside that published table."""
    folder = Path(folder)
    if against_table is not None and against_table not in reported_tables():
        raise LoceditError(f"no reported table {against_table!r}; shipped: {', '.join(reported_tables())}")
    if not folder.is_dir():
        raise LoceditError(f"{folder} is not a folder written by 'locedit bench'")
    malformed: list = []
    rows = canonical(load_rows(folder, malformed))
    if not rows:
        raise LoceditError(f"{folder} holds no results*.jsonl rows (run 'locedit bench' first)")
    summary = summarise(rows)
    settings, info = "", {}
    run_file = folder / "run.json"
    if run_file.exists():
        import json

        try:
            info = json.loads(run_file.read_text())
            settings = "Settings: " + ", ".join(f"{k} `{v}`" for k, v in info.items() if v is not None) + "\n\n"
        except (OSError, ValueError):
            settings = ""
    md = folder / "report.md"
    skipped = ""
    if malformed:
        where = ", ".join(f"{f}:{n}" for f, n in malformed[:10]) + (" ..." if len(malformed) > 10 else "")
        skipped = f"{len(malformed)} line(s) without an id and a method were skipped: {where}\n\n"
    md.write_text("# Benchmark report\n\n" + settings + skipped + "## Per method\n\n" + markdown_tables(summary, edit_types=False)
                  + "\n\n## Per method and edit type\n\n" + markdown_tables(summary) + "\n"
                  + ("\n" + against(folder, against_table, summary, info) if against_table else ""))
    written = {"markdown": md, "gallery": gallery(rows, folder)}
    for p in plots(summary, folder):
        written[p.stem] = p
    return written


REPORTED = Path(__file__).with_name("reported")


def reported_tables() -> dict[str, Path]:
    """``paper:table`` -> the shipped file (``spdinv-table1.json`` is ``spdinv:table1``,
    ``mag-edit-table1-pie.json`` is ``mag-edit:table1-pie``)."""
    import re

    return {re.sub(r"-(table\d.*)$", r":\1", p.stem): p for p in sorted(REPORTED.glob("*.json"))}


def against(folder: Path, spec: str, summary: dict, info: dict) -> str:
    """Markdown: the run beside the published rows of ``spec`` with the same method and inversion,
    metric by metric (published as raw figures: the printed value over its scale), and the settings
    in which the run differs from the table's."""
    import json

    tables = reported_tables()
    if spec not in tables:
        raise LoceditError(f"no reported table {spec!r}; shipped: {', '.join(tables) or 'none'}")
    table = json.loads(tables[spec].read_text())
    inversion = info.get("inversion")
    lines = [f"## Against {table['paper']}, {table['table']}\n"]
    differ = [f"{k} `{info.get(k)}` (the table: `{table[k]}`)" for k in ("model", "steps", "guidance")
              if info.get(k) is not None and str(info.get(k)) != str(table[k])]
    lines.append("Settings that differ: " + ("; ".join(differ) if differ else "none of model, steps, guidance") +
                 f". The table's benchmark: {table['benchmark']} ({table['subset']}).\n")
    matched = False
    for (method, kind), stats in sorted(summary.items()):
        row = next((r for r in table["rows"] if r["method"] == method and r["inversion"] in (inversion, "default")),
                   None)  # "default": the paper names none, the method runs its own (locedit's default)
        if kind != "all" or row is None:
            continue
        matched = True
        lines.append(f"\n{method} on {inversion}:\n\n| metric | published | this run | difference |\n|---|---:|---:|---:|")
        for metric, v in row["values"].items():
            published = v["value"] / v["scale"]
            if metric not in stats or stats[metric][1] == 0:  # not measured (e.g. no weights for the network)
                lines.append(f"| {metric} | {published:.6g} | not measured | - |")
                continue
            ours = stats[metric][0]
            lines.append(f"| {metric} | {published:.6g} | {ours:.6g} | {ours - published:+.6g} |")
    if not matched:
        lines.append(f"\nNo row of the table has this run's methods ({', '.join(sorted({m for m, _ in summary}))}) "
                     f"on its inversion `{inversion}`.")
    return "\n".join(lines) + "\n"
