"""Issue 35, item 2: published numbers ship as data (locedit/bench/reported/*.json, written from the papers'
text by bench/reported_from_papers.py). The schema holds: who, which table, with what settings, and
every row named by locedit's registries and metrics, with a value and the scale it is printed at."""

import json
from pathlib import Path

from locedit.bench.report import METRICS
from locedit.inversion import INVERSIONS
from locedit.bench.names import bench_methods

REPORTED = Path(__file__).resolve().parents[1] / "locedit" / "bench" / "reported"
EXTRA_METRICS = {"inversion_seconds"}  # reported beside the metrics; the runner's rows time the whole edit
EXTRA_INVERSIONS = {"npi+proximal", "default"}  # ProxEdit: NPI with the proximal guidance options; the method's own
EXTRA_METHODS = {"p2p-reweight"}  # MAG-Edit's P2P+Re-weight baseline: no bench method of its own


def test_every_reported_table_holds_its_schema():
    files = sorted(REPORTED.glob("*.json"))
    assert files, "no reported table"
    for path in files:
        table = json.loads(path.read_text())
        for key in ("paper", "table", "benchmark", "subset", "model", "steps", "guidance", "hardware", "rows"):
            assert table.get(key) not in (None, "", []), (path.name, key)
        seen = set()
        for row in table["rows"]:
            assert row["method"] in bench_methods() or row["method"] in EXTRA_METHODS, (path.name, row["method"])
            assert row["inversion"] in INVERSIONS or row["inversion"] in EXTRA_INVERSIONS, (path.name, row)
            key = (row["method"], row["inversion"])
            assert key not in seen, (path.name, key)  # one row per (method, inversion)
            seen.add(key)
            for metric, v in row["values"].items():
                assert metric in METRICS or metric in EXTRA_METRICS, (path.name, metric)
                assert isinstance(v["value"], float) and v["scale"] in (1e-2, 1, 1e2, 1e3, 1e4), (path.name, metric, v)


def test_spdinv_table_1_as_printed():
    """Spot checks against the printed table (SPDInv, ECCV 2024, Table 1): SPDInv with P2P, and the
    row count (8 inversions under P2P, 5 under MasaCtrl, 4 under PnP)."""
    table = json.loads((REPORTED / "spdinv-table1.json").read_text())
    rows = {(r["method"], r["inversion"]): r["values"] for r in table["rows"]}
    assert len(rows) == 17
    spd = rows[("p2p", "spd")]
    assert (spd["structure_distance"]["value"], spd["bg_psnr"]["value"], spd["clip_whole"]["value"]) == (8.81, 28.6, 25.26)
    assert spd["structure_distance"]["scale"] == 1e3 and rows[("pnp", "aidi")]["bg_mse"]["value"] == 78.19


def test_mag_edit_table_1_as_printed():
    """MAG-Edit (ACM MM 2024), Table 1: three benchmarks, two columns each, eight rows; spot checks."""
    tables = {b: json.loads((REPORTED / f"mag-edit-table1-{b}.json").read_text()) for b in ("mag-bench", "pie", "ted")}
    rows = {b: {r["method"]: r["values"] for r in t["rows"]} for b, t in tables.items()}
    assert all(len(r) == 8 for r in rows.values())
    assert rows["mag-bench"]["mag-edit"]["clip_box"]["value"] == 21.79
    assert rows["pie"]["p2p-mask"]["structure_distance_box"]["value"] == 0.059
    assert rows["ted"]["mag-edit"]["structure_distance_box"]["value"] == 0.062
    assert tables["pie"]["benchmark"] == "PIE-Bench"


def test_mde_edit_table_1_as_printed():
    """MDE-Edit, Table 1: NTI+P2P and MDE-Edit in both column groups (CDS, GnR, OIR left out, named)."""
    for key, (p2p_clip, mde_ssim) in {"non-overlap": (0.258, 0.925), "overlap": (0.267, 0.936)}.items():
        t = json.loads((REPORTED / f"mde-edit-table1-{key}.json").read_text())
        rows = {r["method"]: r["values"] for r in t["rows"]}
        assert set(rows) == {"p2p", "mde-edit"} and "CDS, GnR, OIR" in t["notes"]
        assert rows["p2p"]["clip_whole"]["value"] == p2p_clip and rows["mde-edit"]["bg_ssim"]["value"] == mde_ssim
        assert abs(rows["p2p"]["clip_whole"]["value"] / rows["p2p"]["clip_whole"]["scale"] - 100 * p2p_clip) < 1e-9


def test_locinv_table_2_as_printed():
    """LocInv, Table 2 (COCO-Edit): the bench's columns of seven rows per block; spot checks."""
    multi = {r["method"]: r["values"] for r in json.loads((REPORTED / "locinv-table2-multi.json").read_text())["rows"]}
    single = {r["method"]: r["values"] for r in json.loads((REPORTED / "locinv-table2-single.json").read_text())["rows"]}
    assert len(multi) == len(single) == 7
    assert (multi["locinv"]["bg_psnr"]["value"], multi["locinv"]["bg_mse"]["value"]) == (24.3783, 0.0054)
    assert (single["diffedit"]["lpips_alex"]["value"], single["masactrl"]["clip_whole"]["value"]) == (0.1873, 22.0493)


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
    assert ("no reported table 'nopaper:table9'; shipped: locinv:table2-multi, locinv:table2-single, "
            "mag-edit:table1-mag-bench, mag-edit:table1-pie, "
            "mag-edit:table1-ted, mde-edit:table1-non-overlap, mde-edit:table1-overlap, spdinv:table1"
            ) in capsys.readouterr().err


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
    readme = (out / "README.md").read_text()
    assert "Skipped (no bench method or inversion flags for them): " in readme and "on npi+proximal" in readme


def test_mag_edits_table_plans_its_runs_and_matches_default_rows(tmp_path):
    """MAG-Edit's P2P rows run on null-text, the rows whose inversion the paper does not name on each
    method's own ("default"), P2P+Re-weight (no bench method) is left out; a run on null-text is put
    beside both kinds of row."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import reproduce

    from locedit.bench.report import against

    table = json.loads((REPORTED / "mag-edit-table1-pie.json").read_text())
    assert reproduce.plan(table) == {"default": ["blended", "diffedit", "masactrl", "pnp"],
                                     "null-text": ["p2p", "p2p-mask", "mag-edit"]}
    summary = {("mag-edit", "all"): {"clip_box": (23.0, 2, 0)}, ("masactrl", "all"): {"clip_box": (20.0, 2, 0)}}
    md = against(tmp_path, "mag-edit:table1-pie", summary, {"inversion": "null-text"})
    assert "| clip_box | 22.76 | 23 | +0.24 |" in md and "| clip_box | 20.44 | 20 | -0.44 |" in md
    assert "| structure_distance_box | 0.073 | not measured | - |" in md


def test_reproduce_runs_mag_edits_and_mde_edits_tables_on_the_tiny_model(tmp_path):
    """Each seed paper's table end to end (item 3): LocInv's multi-object block, MAG-Edit's PIE-Bench
    columns and MDE-Edit's overlapping group on tiny-random and a synthetic PIE-Bench folder - every planned row runs, none fails, each report
    puts the run beside the table."""
    import sys

    from test_metrics_bench import _pie_folder

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import reproduce

    data = _pie_folder(tmp_path)
    for spec, file in (("locinv:table2-multi", "locinv-table2-multi.json"), ("mag-edit:table1-pie", "mag-edit-table1-pie.json"),
                       ("mde-edit:table1-overlap", "mde-edit-table1-overlap.json")):
        out = tmp_path / file
        assert reproduce.main([spec, "--model", "tiny-random", "--data", str(data), "--steps", "6", "--limit", "1",
                               "--out-dir", str(out)]) == 0
        for inversion, methods in reproduce.plan(json.loads((REPORTED / file).read_text())).items():
            rows = [json.loads(line) for line in (out / inversion / "results.jsonl").read_text().splitlines()]
            assert sorted(r["method"] for r in rows) == sorted(methods) and all("error" not in r for r in rows), rows
            assert "## Against" in (out / inversion / "report.md").read_text()
