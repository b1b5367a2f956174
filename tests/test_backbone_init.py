"""ImageNet RepViT-M1 initialisation of the student's backbone, checked against the reference manifest of
THU-MIG's checkpoint (keys and shapes only: the weights here are synthetic, none can be downloaded)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgesam.models.backbone_init import load_repvit_imagenet
from edgesam.models.repvit import RepViTEncoder

REF = Path(__file__).resolve().parent.parent.parent / "shared" / "reference" / "repvit_m1_imagenet_manifest.json"


@pytest.fixture(scope="module")
def imagenet_manifest() -> dict:
    if not REF.is_file():
        pytest.skip(f"RepViT ImageNet manifest not found at {REF}")
    return json.loads(REF.read_text())


def _synthetic(keys: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key, (shape, dtype) in keys.items():
        if dtype == "int64":
            out[key] = torch.tensor(300, dtype=torch.int64).expand(shape).clone()
        else:
            out[key] = torch.rand(shape, generator=g) + 0.5
    return out


def test_original_m1_checkpoint_lands_in_every_mapped_tensor(imagenet_manifest, tmp_path):
    keys = imagenet_manifest["keys"]
    assert len(keys) == imagenet_manifest["num_tensors"] == 690
    state = _synthetic(keys)
    path = tmp_path / "repvit_m1_distill_300.pth"
    torch.save({"model": state, "epoch": 299}, path)  # as THU-MIG's main.py saves it
    enc = RepViTEncoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    report = load_repvit_imagenet(enc, path)
    mapping = imagenet_manifest["mapping"]
    assert sorted(report.loaded) == sorted(mapping["same_key_same_shape"]) and len(report.loaded) == 676
    assert sorted(report.ignored) == sorted(mapping["imagenet_keys_without_encoder_counterpart"])
    assert sorted("image_encoder." + k for k in report.random) == sorted(mapping["encoder_keys_not_covered"])
    after = enc.state_dict()
    for k in report.loaded:
        assert torch.equal(after[k], state[k]), k
    for k in report.random:  # the neck and fuse convs keep their own initialisation
        assert torch.equal(after[k], before[k]), k
    assert "676" in report.summary() and "neck" in report.summary() and "14" in report.summary()


def test_renamed_m0_9_checkpoint_is_refused_with_the_reason(imagenet_manifest):
    variant = imagenet_manifest["variant_repvit_m0_9_distill_300e"]
    state = _synthetic(variant["keys"])
    enc = RepViTEncoder()
    before = {k: v.clone() for k, v in enc.state_dict().items()}
    with pytest.raises(ValueError, match=r"M0\.9.*RepVGG-DW layout"):
        load_repvit_imagenet(enc, {"model": state})
    assert all(torch.equal(v, before[k]) for k, v in enc.state_dict().items()), "a refused file changed weights"


def test_wrong_or_missing_backbone_keys_are_named(imagenet_manifest):
    state = _synthetic(imagenet_manifest["keys"])
    bad = dict(state)
    bad["features.4.token_mixer.2.c.weight"] = torch.zeros(7, 48, 1, 1)
    del bad["features.25.channel_mixer.m.0.c.weight"]
    with pytest.raises(ValueError, match=r"shape mismatch.*features\.4\.token_mixer\.2\.c\.weight.*features\.25\.channel_mixer"):
        load_repvit_imagenet(RepViTEncoder(), bad)
