"""Student architecture, official-checkpoint compatibility, re-parameterisation, teacher builder."""
from __future__ import annotations

import copy

import pytest
import torch

from edgesam.models import EdgeSAM, build_teacher, fuse_for_deploy, load_student, save_student
from edgesam.models.checkpoint import load_state_dict_strict
from edgesam.models.layers import Conv2dBN, RepVGGDW


def _count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_parameter_counts_match_paper_and_manifest(manifest):
    model = EdgeSAM(1024)
    total, enc = _count(model), _count(model.image_encoder)
    assert abs(total - 9.58e6) / 9.58e6 < 0.01
    assert abs(enc - 5.52e6) / 5.52e6 < 0.01
    assert total == manifest["num_params_total"]
    assert enc == manifest["num_params_image_encoder"]


def _state_from_manifest(manifest: dict) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for key, shape in manifest["keys"].items():
        if key.endswith("num_batches_tracked"):
            out[key] = torch.tensor(7)
        elif key.endswith("running_var"):
            out[key] = torch.rand(shape, generator=g) + 0.5
        else:
            out[key] = torch.randn(shape, generator=g) * 0.02
    return out


def test_official_state_dict_loads_strict(manifest, tmp_path):
    state = _state_from_manifest(manifest)
    path = tmp_path / "edge_sam.pth"
    torch.save(state, path)  # official files are a bare state dict
    model, extras = load_student(path, img_size=1024)
    assert extras == {}
    loaded = model.state_dict()
    for key in ("image_encoder.features.0.0.c.weight", "mask_decoder.mask_tokens.weight",
                "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix", "image_encoder.neck.3.bias"):
        assert torch.equal(loaded[key], state[key])
    # wrapped in {"model": ...} as some releases do
    torch.save({"model": state}, tmp_path / "wrapped.pth")
    load_student(tmp_path / "wrapped.pth", img_size=256)


def test_wrong_shape_names_the_key(manifest):
    state = _state_from_manifest(manifest)
    state["image_encoder.neck.0.weight"] = torch.zeros(128, 256, 1, 1)
    with pytest.raises(ValueError, match=r"image_encoder\.neck\.0\.weight.*\(128, 256, 1, 1\)"):
        load_state_dict_strict(EdgeSAM(1024), state)
    del state["image_encoder.neck.0.weight"]
    with pytest.raises(ValueError, match=r"missing keys.*image_encoder\.neck\.0\.weight"):
        load_state_dict_strict(EdgeSAM(1024), state)


def _randomise_bn(model: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


@pytest.mark.parametrize("size", [256, 320])
def test_any_multiple_of_64_and_output_shapes(size):
    model = EdgeSAM(size).eval()
    with torch.no_grad():
        feats = model.image_encoder.forward_features(torch.randn(1, 3, size, size))
        masks, iou = model.decode(feats["embedding"], torch.rand(3, 2, 2) * size, torch.tensor([[1, -1]] * 3))
    assert feats["embedding"].shape == (1, 256, size // 16, size // 16)
    assert feats["s8"].shape == (1, 96, size // 8, size // 8)
    assert feats["s32"].shape == (1, 384, size // 32, size // 32)
    assert masks.shape == (3, 4, size // 4, size // 4) and iou.shape == (3, 4)
    with pytest.raises(ValueError, match="multiple of 64"):
        EdgeSAM(300)


def test_fuse_for_deploy_matches_unfused():
    model = EdgeSAM(256).eval()
    _randomise_bn(model)
    x = torch.randn(2, 3, 256, 256)
    with torch.no_grad():
        ref = model.image_encoder(x)
        fused = fuse_for_deploy(copy.deepcopy(model.image_encoder)).eval()
        out = fused(x)
    assert not any(isinstance(m, (Conv2dBN, RepVGGDW, torch.nn.BatchNorm2d)) for m in fused.modules())
    assert _count(fused) < _count(model.image_encoder)
    err = (out - ref).abs().max().item()
    assert err < 1e-4 * max(1.0, ref.abs().max().item()), err


def test_decoder_batched_equals_one_by_one():
    model = EdgeSAM(256).eval()
    emb = torch.randn(1, 256, 16, 16)
    coords = torch.rand(4, 3, 2) * 256
    labels = torch.tensor([[1, 0, -1], [2, 3, 1], [1, -2, -1], [2, 3, -1]])
    with torch.no_grad():
        batched, iou_b = model.decode(emb, coords, labels)
        single = torch.cat([model.decode(emb, coords[i:i + 1], labels[i:i + 1])[0] for i in range(4)])
        per_prompt = model.decode(emb.expand(4, -1, -1, -1).clone(), coords, labels)[0]
    assert torch.allclose(batched, single, atol=1e-4)
    assert torch.allclose(batched, per_prompt, atol=1e-4)


def test_ignore_label_has_zero_embedding_and_box_corners_differ_from_points():
    pe = EdgeSAM(256).prompt_encoder
    coords = torch.tensor([[[10.0, 20.0], [10.0, 20.0], [10.0, 20.0]]])
    emb = pe.embed_points(coords, torch.tensor([[-2, 1, 2]]))
    assert torch.count_nonzero(emb[0, 0]) == 0
    assert not torch.allclose(emb[0, 1], emb[0, 2])


def test_student_checkpoint_round_trip(tmp_path):
    model = EdgeSAM(256)
    _randomise_bn(model)
    path = save_student(model, tmp_path / "s.pt", meta={"step": 3})
    loaded, extras = load_student(path, img_size=256)
    assert extras["meta"] == {"step": 3}
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k


def test_tiny_teacher_is_seeded_and_registry_names():
    a, b = build_teacher("tiny", img_size=256, seed=1), build_teacher("tiny", img_size=256, seed=1)
    x = torch.randn(1, 3, 256, 256)
    assert torch.equal(a.embed(x), b.embed(x))
    assert a.embed(x).shape == (1, 256, 16, 16)
    assert a.random_weights and a.identity["checkpoint_sha256"] is None
    assert all(not p.requires_grad for p in a.parameters())
    with pytest.raises(ValueError, match="unknown teacher"):
        build_teacher("vit_x")
    with pytest.raises(FileNotFoundError, match="sam_vit_h"):
        build_teacher("vit_h", checkpoint="/nonexistent/sam_vit_h_4b8939.pth")


def test_registry_teacher_loads_checkpoint_through_segment_anything(tmp_path):
    """A SAM checkpoint in the official layout loads via segment-anything's registry (ViT-B, random values)."""
    from segment_anything import sam_model_registry

    sam = sam_model_registry["vit_b"](checkpoint=None)
    with torch.no_grad():
        sam.mask_decoder.mask_tokens.weight.fill_(0.25)
    path = tmp_path / "sam_vit_b_test.pth"
    torch.save(sam.state_dict(), path)
    teacher = build_teacher("vit_b", checkpoint=path)
    assert not teacher.random_weights and len(teacher.identity["checkpoint_sha256"]) == 64
    assert torch.all(teacher.prompt_decoder.mask_decoder.mask_tokens.weight == 0.25)
