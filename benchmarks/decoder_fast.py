"""Decoder per prompt against the MAC floor (reference vs split graphs, fp32 vs INT8), and the INT8 encoder.

    python benchmarks/decoder_fast.py --threads 1 --prompts 64,100 --repeats 3 \
        --checkpoint /tmp/quick_student.pt --out BENCHMARKS.md

Floor = MACs / this machine's 1-thread fp32 matmul rate, the rate measured IN THE SAME RUN, interleaved with
the timed calls (ONNX Runtime MatMul 2048^3 and torch 2048^3, the faster of the two), so that machine load
hits floor and timing alike. MACs are the reference decoder's (``FlopCounterMode``, 1.81 G per prompt at
S = 1024), so the same floor judges every variant; the split graph's own MACs are shown beside it. Timings
do not depend on the weights (random at S = 1024). Accuracy (mask IoU of INT8 vs fp32, box prompts from the
RPN-free centre grid on photos) uses ``--checkpoint`` at ``--acc-img-size`` when given, else random weights.
Writes sections ``decoder-fast`` and ``int8`` of ``--out``.
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import count_macs, load_average, machine_info, median, replace_section  # noqa: E402
from edgesam.export.decoder_fast import FastPromptDecoder  # noqa: E402
from edgesam.export.onnx_export import export_all  # noqa: E402
from edgesam.inference.ort_backend import CPU_EP, OrtEncoder  # noqa: E402
from edgesam.inference.ort_fast import make_ort_decoder  # noqa: E402
from edgesam.inference.quantize import int8_name, quantize_folder  # noqa: E402
from edgesam.models import EdgeSAM  # noqa: E402


def cpu_isa() -> str:
    """The SIMD extensions that matter for fp32 / int8 GEMMs, from /proc/cpuinfo."""
    try:
        flags = set(next(l for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("flags")).split())
    except (OSError, StopIteration):
        return "unknown"
    want = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8")
    return ", ".join(f for f in want if f in flags) or "none of " + ", ".join(want)


def _matmul_session(n: int, threads: int):
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                          [helper.make_tensor_value_info("a", TensorProto.FLOAT, [n, n]),
                           helper.make_tensor_value_info("b", TensorProto.FLOAT, [n, n])],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=[CPU_EP])


class MatmulRate:
    """fp32 GEMM rate (GMAC/s) of this machine with ``threads`` threads: the faster of ORT and torch."""

    def __init__(self, threads: int, n: int = 1024) -> None:
        self.n, self.threads = n, threads
        self.sess = _matmul_session(n, threads)
        rng = np.random.default_rng(0)
        self.a, self.b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        self.ta, self.tb = torch.from_numpy(self.a), torch.from_numpy(self.b)

    def __call__(self, runs: int = 3) -> float:
        torch.set_num_threads(self.threads)
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            self.sess.run(None, {"a": self.a, "b": self.b})
            t1 = time.perf_counter()
            self.ta @ self.tb
            t2 = time.perf_counter()
            best = min(best, t1 - t0, t2 - t1)
        return self.n ** 3 / best / 1e9


def _prompts(n: int, s: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    xy = np.sort(rng.uniform(0, s, (n, 2, 2)), axis=1).astype(np.float32)
    return xy, np.tile(np.array([[2.0, 3.0]], np.float32), (n, 1))


def bench_decoders(onnx_dir: Path, model: EdgeSAM, threads: int, counts: list[int], repeats: int, rate: MatmulRate) -> dict:
    s = model.img_size
    emb = np.random.default_rng(0).standard_normal((1, 256, s // 16, s // 16)).astype(np.float32)
    pd = model.as_prompt_decoder()
    fast_t = FastPromptDecoder(pd).eval()
    c1, l1 = (torch.from_numpy(a) for a in _prompts(4, s))
    with torch.no_grad():
        ref_macs = count_macs(lambda: pd(torch.from_numpy(emb), c1, l1)) / 4
        fast_macs = count_macs(lambda: fast_t.prompt_side(*fast_t.image_side(torch.from_numpy(emb)), c1, l1)) / 4
        image_macs = count_macs(lambda: fast_t.image_side(torch.from_numpy(emb)))
    decs = {"reference fp32": make_ort_decoder(onnx_dir, [CPU_EP], threads, "reference"),
            "split fp32": make_ort_decoder(onnx_dir, [CPU_EP], threads, "fast"),
            "split int8": make_ort_decoder(onnx_dir, [CPU_EP], threads, "fast", int8=True)}
    rows: dict[tuple[str, int], list[float]] = {}
    rates: list[float] = []
    for n in counts:
        c, l = _prompts(n, s)
        for d in decs.values():
            d(emb + 0.5, c[:2], l[:2])  # warm-up; a different embedding, so the split graph's image side reruns
        for _ in range(repeats):
            rates.append(rate())
            for name, d in decs.items():
                if hasattr(d, "_emb"):
                    d._emb = None  # time the image side too: one image, n prompts
                t0 = time.perf_counter()
                d(emb, c, l)
                rows.setdefault((name, n), []).append(time.perf_counter() - t0)
            rates.append(rate())
    return {"ref_gmacs": ref_macs / 1e9, "fast_gmacs": fast_macs / 1e9, "image_gmacs": image_macs / 1e9,
            "rates": rates, "times": {f"{k[0]}|{k[1]}": v for k, v in rows.items()}}


def bench_encoder(onnx_dir: Path, threads: int, repeats: int, rate: MatmulRate, s: int) -> dict:
    quantize_folder(onnx_dir, ["encoder.onnx"])
    encs = {"fp32": OrtEncoder(onnx_dir / "encoder.onnx", [CPU_EP], threads),
            "int8": OrtEncoder(onnx_dir / int8_name("encoder.onnx"), [CPU_EP], threads)}
    x = np.random.default_rng(0).standard_normal((1, 3, s, s)).astype(np.float32)
    for e in encs.values():
        e(x)
    times: dict[str, list[float]] = {k: [] for k in encs}
    rates = []
    for _ in range(repeats):
        rates.append(rate())
        for k, e in encs.items():
            t0 = time.perf_counter()
            e(x)
            times[k].append(time.perf_counter() - t0)
    return {"times": times, "rates": rates}


def photos(size: int) -> list[tuple[str, np.ndarray]]:
    import skimage.data as d

    return [(n, getattr(d, n)()) for n in ("astronaut", "coffee", "chelsea")]


def accuracy(model: EdgeSAM, tmp: Path, threads: int) -> dict:
    """Mask IoU INT8 vs fp32 on skimage photos (8x8 box grid; encoder + decoder, decoder alone, encoder alone)
    and the encoder's relative embedding error ||e8 - e32|| / ||e32||."""
    from edgesam.data.transforms import preprocess

    export_all(model, tmp, checkpoint_sha256="bench")
    s = model.img_size
    enc32 = OrtEncoder(tmp / "encoder.onnx", [CPU_EP], threads)
    quantize_folder(tmp, ["encoder.onnx"])
    enc8 = OrtEncoder(tmp / int8_name("encoder.onnx"), [CPU_EP], threads)
    dec32 = make_ort_decoder(tmp, [CPU_EP], threads, "fast")
    dec8 = make_ort_decoder(tmp, [CPU_EP], threads, "fast", int8=True)
    out = {"all_int8": [], "decoder_int8": [], "encoder_int8": [], "fp32_area": [], "embedding_rel_err": []}
    for _, img in photos(s):
        x, (h, w) = preprocess(img, s)
        g = (np.arange(8) + 0.5) / 8
        cx, cy = np.meshgrid(g * w, g * h)
        half = np.array([w, h]) / 10
        ctr = np.stack([cx.ravel(), cy.ravel()], 1)
        coords = np.stack([ctr - half, ctr + half], 1).astype(np.float32)
        labels = np.tile(np.array([[2.0, 3.0]], np.float32), (len(coords), 1))
        e32, e8 = enc32(x.numpy()), enc8(x.numpy())
        out["embedding_rel_err"].append(float(np.linalg.norm(e8 - e32) / np.linalg.norm(e32)))
        m32 = dec32(e32, coords, labels)[0][:, 0, : -(-h // 4), : -(-w // 4)] > 0
        for key, (dec, e) in (("all_int8", (dec8, e8)), ("decoder_int8", (dec8, e32)), ("encoder_int8", (dec32, e8))):
            m = dec(e, coords, labels)[0][:, 0, : -(-h // 4), : -(-w // 4)] > 0
            inter, union = (m & m32).sum((1, 2)), (m | m32).sum((1, 2))
            ok = union > 0
            out[key] += (inter[ok] / union[ok]).tolist()
        out["fp32_area"] += m32.mean((1, 2)).tolist()
    return {k: float(np.mean(v)) for k, v in out.items()} | {"masks": len(out["fp32_area"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--img-size", type=int, default=1024)
    p.add_argument("--prompts", default="64,100")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--checkpoint", type=Path, default=None, help="trained student for the INT8 accuracy gate")
    p.add_argument("--enc-img-size", type=int, default=None, help="S for the INT8 encoder timing (default --img-size)")
    p.add_argument("--acc-img-size", type=int, default=256, help="S for the accuracy run (the checkpoint's)")
    p.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    cmd = "python benchmarks/decoder_fast.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    torch.set_num_threads(args.threads)
    info = machine_info(args.threads) | {"isa": cpu_isa(), "load_start": load_average(), "img_size": args.enc_img_size or args.img_size}
    rate = MatmulRate(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = EdgeSAM(args.img_size).eval()
        d = Path(tmp) / "speed"
        export_all(model, d, checkpoint_sha256="random")
        dec = bench_decoders(d, model, args.threads, [int(v) for v in args.prompts.split(",")], args.repeats, rate)
        es = args.enc_img_size or args.img_size
        if es != args.img_size:  # the static INT8 calibration at S = 1024 needs > 8 GB: time the encoder smaller
            torch.manual_seed(0)
            export_all(EdgeSAM(es).eval(), Path(tmp) / "enc", checkpoint_sha256="random")
        enc = bench_encoder(Path(tmp) / "enc" if es != args.img_size else d, args.threads, args.repeats, rate, es)
        if args.checkpoint is not None:
            from edgesam.models.checkpoint import load_student

            acc_model, extras = load_student(args.checkpoint, args.acc_img_size)
            acc_desc = f"`{args.checkpoint}` ({(extras.get('meta') or {}).get('trained', 'trained student')}) at S = {args.acc_img_size}"
        else:
            torch.manual_seed(0)
            acc_model, acc_desc = EdgeSAM(args.acc_img_size).eval(), f"RANDOM weights at S = {args.acc_img_size}"
        acc = accuracy(acc_model.eval(), Path(tmp) / "acc", args.threads)
    info["load_end"] = load_average()
    res = {"info": info, "decoder": dec, "encoder": enc, "accuracy": acc, "acc_desc": acc_desc}
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=float))
    dec_md, int8_md = render(res, cmd)
    replace_section(args.out, "decoder-fast", "## Decoder per prompt vs the MAC floor (issue 12)", dec_md)
    replace_section(args.out, "int8", "## INT8 encoder and decoder, ONNX Runtime (issue 12)", int8_md)
    print(dec_md + "\n\n" + int8_md)
    return 0


def render(res: dict, cmd: str) -> tuple[str, str]:
    info, dec, enc, acc = res["info"], res["decoder"], res["encoder"], res["accuracy"]
    rate = max(dec["rates"] + enc["rates"])
    head = (f"Command: `{cmd}`\n\nMachine: {info['cpu']}, ISA {info['isa']}; {info['threads']} thread(s); onnxruntime "
            f"{info['onnxruntime']}; {info['date']}; 1-min load average {info['load_start']:.1f} at start, "
            f"{info['load_end']:.1f} at end (absolute times move with the machine and its load; the ratios to "
            f"the floor measured alongside are the figure). fp32 matmul rate measured in this run, interleaved with "
            f"the timed calls (best of ORT MatMul / torch, 1024^3): {min(dec['rates']):.0f}-{rate:.0f} GMAC/s; the "
            f"floor uses the best, {rate:.0f} GMAC/s.\n")
    lines = [head, f"Reference decoder {dec['ref_gmacs']:.2f} GMAC per box prompt; split graph {dec['fast_gmacs']:.2f} "
             f"GMAC per prompt + {dec['image_gmacs']:.2f} GMAC once per image (S = 1024, random weights: speed only). "
             "Floor per prompt = reference MACs / rate. Time = one call with all prompts, the split graph's image "
             "side included.", "",
             "| prompts | decoder | median s / call | ms / prompt | floor ms / prompt | x floor | speed-up vs reference fp32 |",
             "|---:|---|---:|---:|---:|---:|---:|"]
    floor_ms = dec["ref_gmacs"] / rate * 1e3
    base = {}
    for key, ts in dec["times"].items():
        name, n = key.split("|")
        n = int(n)
        ms = median(ts) / n * 1e3
        if name == "reference fp32":
            base[n] = ms
        lines.append(f"| {n} | {name} | {median(ts):.3f} | {ms:.1f} | {floor_ms:.1f} | {ms / floor_ms:.2f} | "
                     f"{base.get(n, ms) / ms:.2f}x |")
    e32, e8 = median(enc["times"]["fp32"]), median(enc["times"]["int8"])
    acc_lines = [head, "INT8 (recipe: `edgesam/inference/quantize.py`): encoder channel mixers static QDQ with "
                 "SmoothQuant on their inputs, calibrated on 3 skimage photos not among those scored; prompt decoder "
                 "output upscaling dynamic; everything else fp32. Selected with `make_backends('onnxruntime', "
                 "int8=True)` or `EverythingGenerator.from_onnx(..., int8=True)`.", "",
                 "| graph | fp32 median s | int8 median s | speed-up |", "|---|---:|---:|---:|",
                 f"| encoder (S = {res['info'].get('img_size', 1024)}, batch 1) | {e32:.3f} | {e8:.3f} | {e32 / e8:.2f}x |"]
    for n in sorted(base):
        r32, r8 = median(dec["times"][f"split fp32|{n}"]), median(dec["times"][f"split int8|{n}"])
        acc_lines.append(f"| split decoder, {n} prompts | {r32:.3f} | {r8:.3f} | {r32 / r8:.2f}x |")
    gate = "met" if acc["all_int8"] >= 0.97 else "NOT met"
    acc_lines += ["", f"Accuracy on photos (skimage astronaut, coffee, chelsea; an 8x8 grid of box prompts each, "
                  f"{acc['masks']} masks, low-res masks compared; weights: {res['acc_desc']}; fp32 masks cover "
                  f"{100 * acc['fp32_area']:.0f} % of the image on average): mean mask IoU INT8 vs fp32 "
                  f"**{acc['all_int8']:.3f}** with encoder and decoder in INT8 (gate >= 0.97: {gate}), "
                  f"{acc['decoder_int8']:.3f} with the decoder alone in INT8, {acc['encoder_int8']:.3f} with the "
                  f"encoder alone (embedding error {100 * acc['embedding_rel_err']:.2f} %)."]
    return "\n".join(lines), "\n".join(acc_lines)


if __name__ == "__main__":
    sys.exit(main())
