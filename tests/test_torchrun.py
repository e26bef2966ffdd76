"""Issue 35, item 4: the bench under torchrun - two CPU processes each run their share of the items
into their own shard; a rank killed mid-write (its shard cut in the middle of a line) is resumed by
running the same command again; the merged rows have every (item, method) once."""

import json
import os
import shutil
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(shutil.which("torchrun") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "torchrun")), reason="torchrun is not installed")


def _torchrun(out, env):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "locedit",
           "bench", "--dataset", "shapes:n=5,kinds=colour", "--methods", "p2p,sdedit", "--model", "tiny-random",
           "--steps", "2", "--inversion", "ddim", "--quiet", "--out-dir", str(out)]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def test_two_ranks_shard_the_items_and_a_killed_rank_resumes(tmp_path):
    from locedit.bench import load_rows

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    first = _torchrun(out, env)
    assert first.returncode == 0, first.stderr[-2000:]
    shards = sorted(p.name for p in out.glob("results*.jsonl"))
    assert shards == ["results.rank0.jsonl", "results.rank1.jsonl"]
    per_rank = [[json.loads(l) for l in (out / s).read_text().splitlines()] for s in shards]
    ids = [{r["id"] for r in rows} for rows in per_rank]
    assert not ids[0] & ids[1] and len(ids[0] | ids[1]) == 5  # each item on one rank only
    assert {len(rows) for rows in per_rank} == {4, 6}  # items 0, 2, 4 and 1, 3, two methods each
    # rank 1 killed mid-write: its shard keeps one row and a torn line
    lines = (out / shards[1]).read_text().splitlines()
    (out / shards[1]).write_text(lines[0] + "\n" + lines[1][: len(lines[1]) // 2])
    assert len(load_rows(out)) == 6 + 1
    again = _torchrun(out, env)
    assert again.returncode == 0, again.stderr[-2000:]
    rows = load_rows(out)
    keys = [(r["id"], r["method"]) for r in rows]
    assert len(keys) == len(set(keys)) == 10 and all("error" not in r for r in rows)
    assert len((out / shards[0]).read_text().splitlines()) == 6  # rank 0 had nothing left to do
