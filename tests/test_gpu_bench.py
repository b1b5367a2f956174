"""``benchmarks/gpu.py --smoke``: the GPU check's code runs on the CPU at tiny sizes, as it is run on the GPU
machine (the checkout on PYTHONPATH, no install step), so it cannot rot between the visits to a GPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("encoder", "split decoder", "everything", "accuracy", "distill", "peers")


def test_gpu_smoke_writes_every_section(tmp_path: Path) -> None:
    out_json, out_md = tmp_path / "gpu.json", tmp_path / "gpu.md"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "benchmarks/gpu.py", "--smoke", "--json", str(out_json), "--md",
                           str(out_md)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    wall = time.perf_counter() - t0
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(out_json.read_text())
    assert run["meta"]["smoke"] is True and run["meta"]["device"].startswith("CPU")
    rows = run["rows"]
    assert {r["section"] for r in rows} == set(SECTIONS)
    for r in rows:
        note = r.get("note", "")
        assert "error" not in note and "budget" not in note, r
        cuda_only = "CUDA graphs" in r["name"]
        if cuda_only:
            assert note == "skipped: needs CUDA", r
        elif r["section"] == "peers" and not r["name"].startswith("EdgeSAM"):
            assert note.startswith("skipped in the smoke run"), r
        else:
            assert r["value"] > 0 and r["unit"], r
    counts = {s: sum(r["section"] == s and "value" in r for r in rows) for s in SECTIONS}
    assert counts == {"encoder": 3, "split decoder": 3, "everything": 1, "accuracy": 1, "distill": 2, "peers": 2}
    acc = next(r for r in rows if r["section"] == "accuracy")
    assert acc["value"] >= 0.98 and acc["masks_compared"] >= 12, acc
    every = next(r for r in rows if r["section"] == "everything" and "value" in r)
    assert abs(sum(every["share"].values()) - 1.0) < 0.01 and set(every["share"]) == {"encoder", "decoder", "post"}
    md = out_md.read_text()
    for s in SECTIONS:
        assert f"**{s}**" in md
    assert md.startswith("**All weights are random**")
    # the same table again from the JSON, as a GPU run's files are turned into BENCHMARKS.md
    bench = tmp_path / "BENCHMARKS.md"
    bench.write_text("# Benchmarks\n")
    subprocess.run([sys.executable, "benchmarks/gpu.py", "--from-json", str(out_json), "--out", str(bench)],
                   cwd=ROOT, env=env, check=True, capture_output=True, timeout=120)
    text = bench.read_text()
    assert "<!-- gpu:begin -->" in text and md.strip() in text
    print(f"gpu.py --smoke: {wall:.1f} s wall, {run['meta']['total_s']:.1f} s measured")
