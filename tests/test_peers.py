"""The peer image encoders of benchmarks/peers.py and their rows in benchmarks/encoders.py.

Models are built on the meta device: shapes, parameter counts and MACs without computing a 1024x1024
forward pass, so the whole file runs in seconds. Peers whose package is not installed (CI installs only
``.[dev]``, which has segment_anything but not the other peers) skip with the pip command as the reason.
"""
from __future__ import annotations

import sys

import pytest
import torch

from benchmarks.common import count_macs, count_params
from benchmarks.peers import PEERS, PeerUnavailable, build_peer


def _build_meta(key: str, **kwargs) -> tuple[str, torch.nn.Module, int]:
    try:
        return build_peer(key, device="meta", **kwargs)
    except PeerUnavailable as e:
        pytest.skip(f"{key} not installed: {e.pip}")


def test_sam_vit_b_builder_shape_params_and_macs() -> None:
    """ViT-B: (1,3,1024,1024) -> (1,256,64,64), SAM's published 89.7 M params and ~486 GMACs."""
    name, enc, size = _build_meta("vit_b")
    assert name == PEERS["vit_b"].name and size == 1024
    x = torch.empty(1, 3, size, size, device="meta")
    with torch.no_grad():
        assert enc(x).shape == (1, 256, size // 16, size // 16)
    assert count_params(enc) == pytest.approx(89.67e6, rel=1e-3)
    assert count_macs(lambda: enc(x)) == pytest.approx(486e9, rel=0.01)


@pytest.mark.parametrize("key, size, params_m", [("mobilesam", 1024, 5.74), ("efficientvit_l0", 512, 30.73),
                                                 ("sam2_hiera_t", 1024, 27.24)])
def test_small_peer_builders(key: str, size: int, params_m: float) -> None:
    name, enc, got_size = _build_meta(key)
    assert got_size == size and name == PEERS[key].name
    assert count_params(enc) / 1e6 == pytest.approx(params_m, abs=0.01)
    with torch.no_grad():
        out = enc(torch.empty(2, 3, size, size, device="meta"))
    assert out.shape == (2, 256, 64, 64)


def test_sam2_high_res_outputs() -> None:
    _, enc, size = _build_meta("sam2_hiera_t", high_res_features=True)
    with torch.no_grad():
        main, s0, s1 = enc(torch.empty(1, 3, size, size, device="meta"))
    assert main.shape == (1, 256, 64, 64) and s0.shape == (1, 32, 256, 256) and s1.shape == (1, 64, 128, 128)


def test_missing_package_gives_skipped_row_with_pip_command(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    from benchmarks import encoders

    for mod in [m for m in sys.modules if m == "efficientsam" or m.startswith("efficientsam.")] + ["efficientsam"]:
        monkeypatch.setitem(sys.modules, mod, None)  # makes the import fail as if not installed
    with pytest.raises(PeerUnavailable, match="pip install 'efficientsam"):
        build_peer("efficientvit_l0")
    (row,) = encoders.bench_peer("efficientvit_l0", threads=1, runs=1, tmp=tmp_path, do_ort=True)
    assert row["median_s"] is None and "pip install 'efficientsam" in row["note"]


def test_table_speedups_and_skipped_row() -> None:
    """EdgeSAM's speed-up is the peer's median over EdgeSAM's in the same runtime; skipped rows say why."""
    from benchmarks import encoders

    rows = [encoders._row("edgesam", "EdgeSAM encoder (RepViT-M1)", "torch eager", 5.52, 20e9, [0.5, 0.5]),
            encoders._row("edgesam", "EdgeSAM encoder (RepViT-M1)", "onnxruntime", 5.52, 20e9, [0.1, 0.1]),
            encoders._row("vit_b", PEERS["vit_b"].name, "torch eager", 89.67, 486e9, [10.0]),
            encoders._row("vit_b", PEERS["vit_b"].name, "onnxruntime", 89.67, 486e9, [3.0]),
            encoders._row("mobilesam", PEERS["mobilesam"].name, "n/a", None, None, None,
                          f"skipped: not installed; `{PEERS['mobilesam'].pip}`", None)]
    info = {"date": "d", "cpu": "c", "logical_cpus": 2, "threads": 2, "torch": "t", "onnxruntime": "o", "python": "p"}
    facts = {"params_total_m": 9.58, "params_encoder_m": 5.52, "params_decoder_m": 4.06, "encoder_gmacs": 20.0,
             "decoder_1prompt_gmacs": 1.8}
    text = encoders.render(info, "cmd", rows, [], [], facts, 100.0, (0.5, 0.5),
                           {"fast": 2, "peers": 2, "vit_b": 1, "vit_h": 1})

    def line(model: str, runtime: str) -> str:
        (hit,) = [ln for ln in text.splitlines() if ln.startswith(f"| {model} | ") and f"| {runtime}" in ln]
        return hit

    assert "| 20.0x |" in line(PEERS["vit_b"].name, "torch eager")
    assert "| 30.0x |" in line(PEERS["vit_b"].name, "onnxruntime")
    assert "| — |" in line("EdgeSAM encoder (RepViT-M1)", "onnxruntime")
    assert PEERS["mobilesam"].pip in line(PEERS["mobilesam"].name, "n/a (skipped: not installed")
    assert "EdgeSAM ORT vs ViT-B ORT: 30.0x (target >= 25x: met)" in text


def test_cli_rejects_unknown_peer() -> None:
    from benchmarks import encoders

    with pytest.raises(SystemExit):
        encoders.main(["--peers", "vit_b,no_such_peer"])
