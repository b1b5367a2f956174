"""benchmarks/annotate.py without Ray: the held-out GT folder and the file_name-matched evaluation."""
from __future__ import annotations

import json
from pathlib import Path

from benchmarks.annotate import evaluate, make_heldout


def test_perfect_predictions_score_one(tmp_path: Path) -> None:
    gt_path = make_heldout(tmp_path, 2, seed=3)
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["sa_0.jpg", "sa_1.jpg"]
    gt = json.loads(gt_path.read_text())
    # predictions as the pipeline writes them: other image ids, matched back through file_name
    ids = {im["id"]: 1000 + 7 * im["id"] for im in gt["images"]}
    pred = {"images": [{**im, "id": ids[im["id"]]} for im in gt["images"]],
            "annotations": [{**a, "image_id": ids[a["image_id"]], "score": 0.9} for a in gt["annotations"]],
            "categories": gt["categories"]}
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    e = evaluate(gt_path, tmp_path / "pred.json")
    assert e["images_matched"] == 2 and e["num_pred"] == e["num_gt"] == len(gt["annotations"]) > 0
    assert e["recall@0.5"] == e["recall@0.75"] == 1.0
    assert abs(e["AP"] - 1.0) < 1e-6 and abs(e["AR"] - 1.0) < 1e-6

    pred["annotations"] = pred["annotations"][: len(pred["annotations"]) // 2]  # half missing
    (tmp_path / "pred.json").write_text(json.dumps(pred))
    e = evaluate(gt_path, tmp_path / "pred.json")
    assert 0 < e["recall@0.5"] < 1 and e["AP"] < 1
