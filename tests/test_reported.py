"""Issue 35, item 2: published numbers ship as data (locedit/bench/reported/*.json, written from the papers'
text by bench/reported_from_papers.py). The schema holds: who, which table, with what settings, and
every row named by locedit's registries and metrics, with a value and the scale it is printed at."""

import json
from pathlib import Path

from locedit.bench.report import METRICS
from locedit.inversion import INVERSIONS
from locedit.methods import METHODS

REPORTED = Path(__file__).resolve().parents[1] / "locedit" / "bench" / "reported"
EXTRA_METRICS = {"inversion_seconds"}  # reported beside the metrics; the runner's rows time the whole edit
EXTRA_INVERSIONS = {"npi+proximal"}  # ProxEdit: NPI with the proximal guidance options


def test_every_reported_table_holds_its_schema():
    files = sorted(REPORTED.glob("*.json"))
    assert files, "no reported table"
    for path in files:
        table = json.loads(path.read_text())
        for key in ("paper", "table", "benchmark", "subset", "model", "steps", "guidance", "hardware", "rows"):
            assert table.get(key) not in (None, "", []), (path.name, key)
        seen = set()
        for row in table["rows"]:
            assert row["method"] in METHODS, (path.name, row["method"])
            assert row["inversion"] in INVERSIONS or row["inversion"] in EXTRA_INVERSIONS, (path.name, row)
            key = (row["method"], row["inversion"])
            assert key not in seen, (path.name, key)  # one row per (method, inversion)
            seen.add(key)
            for metric, v in row["values"].items():
                assert metric in METRICS or metric in EXTRA_METRICS, (path.name, metric)
                assert isinstance(v["value"], float) and v["scale"] in (1, 1e2, 1e3, 1e4), (path.name, metric, v)


def test_spdinv_table_1_as_printed():
    """Spot checks against the printed table (SPDInv, ECCV 2024, Table 1): SPDInv with P2P, and the
    row count (8 inversions under P2P, 5 under MasaCtrl, 4 under PnP)."""
    table = json.loads((REPORTED / "spdinv-table1.json").read_text())
    rows = {(r["method"], r["inversion"]): r["values"] for r in table["rows"]}
    assert len(rows) == 17
    spd = rows[("p2p", "spd")]
    assert (spd["structure_distance"]["value"], spd["bg_psnr"]["value"], spd["clip_whole"]["value"]) == (8.81, 28.6, 25.26)
    assert spd["structure_distance"]["scale"] == 1e3 and rows[("pnp", "aidi")]["bg_mse"]["value"] == 78.19


def test_report_against_a_published_table(tmp_path, capsys):
    """``locedit report RUN --against spdinv:table1``: the run's mean beside the published raw figure
    (printed value / scale) and their difference, for the rows of the run's methods on its inversion,
    and the settings that differ from the table's."""
    from locedit.cli import main

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"dataset": "pie:x", "model": "tiny-random", "steps": 50,
                                              "guidance": 7.5, "inversion": "spd"}))
    rows = [{"id": str(k), "method": "p2p", "edit_type": "0", "bg_psnr": 27.0 + k, "structure_distance": 0.01}
            for k in range(2)]
    (run / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["report", str(run), "--against", "spdinv:table1", "--quiet"]) == 0
    md = (run / "report.md").read_text()
    section = md[md.index("## Against"):]
    table = json.loads((REPORTED / "spdinv-table1.json").read_text())
    published = next(r for r in table["rows"] if r["method"] == "p2p" and r["inversion"] == "spd")["values"]
    psnr = published["bg_psnr"]["value"] / published["bg_psnr"]["scale"]
    dino = published["structure_distance"]["value"] / published["structure_distance"]["scale"]
    assert f"| bg_psnr | {psnr:.6g} | {27.5:.6g} | {27.5 - psnr:+.6g} |" in section
    assert "| clip_whole | 25.26 | not measured | - |" in section
    assert f"| structure_distance | {dino:.6g} | {0.01:.6g} | {0.01 - dino:+.6g} |" in section
    assert "model `tiny-random` (the table: `CompVis/stable-diffusion-v1-4`)" in section and "steps `50`" not in section
    capsys.readouterr()
    assert main(["report", str(run), "--against", "nopaper:table9"]) == 2
    assert "no reported table 'nopaper:table9'; shipped: spdinv:table1" in capsys.readouterr().err


def test_reproduce_runs_a_table_end_to_end_on_the_tiny_model(tmp_path):
    """bench/reproduce.py spdinv:table1 on tiny-random and a synthetic PIE-Bench folder: one run per
    inversion of the table with its methods, each report beside the table; ProxEdit skipped, said so."""
    import sys

    from test_metrics_bench import _pie_folder

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import reproduce

    out = tmp_path / "out"
    assert reproduce.main(["spdinv:table1", "--model", "tiny-random", "--data", str(_pie_folder(tmp_path)),
                           "--steps", "6", "--limit", "1", "--out-dir", str(out)]) == 0
    table = json.loads((REPORTED / "spdinv-table1.json").read_text())
    expected = reproduce.plan(table)
    assert set(expected) == {"ddim", "null-text", "npi", "aidi", "nmg", "direct", "spd"}
    for inversion, methods in expected.items():
        rows = [json.loads(line) for line in (out / inversion / "results.jsonl").read_text().splitlines()]
        assert sorted(r["method"] for r in rows) == sorted(methods) and all("error" not in r for r in rows), rows
        md = (out / inversion / "report.md").read_text()
        assert "## Against" in md and "steps `6` (the table: `50`)" in md, inversion
        assert "| lpips_squeeze | " in md and "| not measured | - |" in md  # no LPIPS weights here
    assert "Skipped (not a registry inversion, no bench flags): npi+proximal" in (out / "README.md").read_text()
