"""benchmarks/ablation.py's in-process engine end to end on a tiny random teacher: the cache it builds, the step
counts of each variant at equal student compute, and the merged report."""
from __future__ import annotations

import json

from benchmarks.ablation import main


def test_ablation_variants_run_equal_steps_and_merge(tmp_path):
    args = ["--teacher-name", "tiny", "--img-size", "64", "--images", "16", "--steps1", "2", "--steps2", "1",
            "--batch-size", "2", "--eval-images", "2", "--work-dir", str(tmp_path)]
    assert main([*args, "--seeds", "0", "--variants", "enc-only", "enc-prompt-frozen"]) == 0
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["counts"]["images"] == 16
    doc = json.loads((tmp_path / "ablation-s0-enc-only-enc-prompt-frozen.json").read_text())
    runs = doc["results"]
    assert runs["enc-only"][0]["steps"] == {"encoder_kd": 3}
    assert runs["enc-prompt-frozen"][0]["steps"] == {"encoder_kd": 2, "prompt_kd": 1}
    for variant in runs.values():
        m = variant[0]["metrics"]
        for k in ("student_vs_gt/box", "student_vs_gt/point+2", "student_vs_teacher/box", "teacher_vs_gt/box"):
            assert 0.0 <= m[k] <= 100.0, (k, m[k])
        assert m["student_vs_gt/num_instances"] >= 1
    out = tmp_path / "BENCHMARKS.md"
    out.write_text("# B\n")
    assert main(["--merge", "--work-dir", str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert "encoder KD only" in text and "step 2 with the decoder frozen" in text and "teacher vs GT" in text
