"""Issue 35, item 2: published numbers ship as data (docs/reported/*.json, written from the papers'
text by bench/reported_from_papers.py). The schema holds: who, which table, with what settings, and
every row named by locedit's registries and metrics, with a value and the scale it is printed at."""

import json
from pathlib import Path

from locedit.bench.report import METRICS
from locedit.inversion import INVERSIONS
from locedit.methods import METHODS

REPORTED = Path(__file__).resolve().parents[1] / "docs" / "reported"
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
