"""Segment everything on 12 MP photos through ONNX Runtime: before (another checkout's code) vs after, side by side.

    python benchmarks/everything.py --fullres --before /work/main --checkpoint /tmp/quick_student.pt \
        --images 2 --out BENCHMARKS.md

Each variant runs in its own fresh process (an annotation actor's situation: 1 intra-op thread), with the code
of its checkout first on ``PYTHONPATH``; peak resident memory is that process's ``ru_maxrss``. Images:
scikit-image's bundled photos (astronaut, coffee, chelsea) resized to 4000 x 3000. The stage split wraps the
generator's RPN and decoder backends with timers (post-processing = the rest), which works for both versions.
Floor = (encoder+RPN MACs + prompts x reference decoder MACs) / the 1-thread fp32 matmul rate measured in the
same worker before and after each image (the variants run one after the other, so each is judged against
the rate of its own time window).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def photos_12mp(n: int) -> list[np.ndarray]:
    import skimage.data as d
    from PIL import Image

    names = ("astronaut", "coffee", "chelsea")
    return [np.asarray(Image.fromarray(getattr(d, names[i % 3])()).resize((4000, 3000), Image.BILINEAR))
            for i in range(n)]


class _Timed:
    """Callable proxy that adds its wall time to ``acc[key]``; other attributes pass through."""

    def __init__(self, inner, acc: dict, key: str) -> None:
        self.__dict__.update(_inner=inner, _acc=acc, _key=key)

    def __call__(self, *a, **k):
        t0 = time.perf_counter()
        out = self._inner(*a, **k)
        self._acc[self._key] += time.perf_counter() - t0
        return out

    def __getattr__(self, name):
        return getattr(self._inner, name)


def worker(spec: dict) -> dict:
    """Runs inside the variant's process: ONNX everything on the photos -> timings, masks, RSS."""
    import torch

    torch.set_num_threads(1)
    import edgesam
    import edgesam.inference.everything as ev

    cfg = ev.EverythingConfig(**spec["cfg"])
    gen = ev.EverythingGenerator.from_onnx(spec["onnx_dir"], cfg, threads=1)
    acc = {"preprocess": 0.0, "rpn": 0.0, "decoder": 0.0}
    gen.rpn = _Timed(gen.rpn, acc, "rpn")
    gen.decoder = _Timed(gen.decoder, acc, "decoder")
    ev.preprocess = _Timed(ev.preprocess, acc, "preprocess")  # the resize of the 12 MP photo to S
    rate = _matmul_rate()
    rates = [rate()]
    imgs = photos_12mp(spec["images"])
    gen.generate(np.asarray(imgs[0][:300, :400]))  # warm-up (sessions, allocator) on a small crop
    per = []
    for img in imgs:
        acc.update(preprocess=0.0, rpn=0.0, decoder=0.0)
        t0 = time.perf_counter()
        recs = gen.generate(img)
        total = time.perf_counter() - t0
        per.append({"total": total, "preprocess": acc["preprocess"], "rpn": acc["rpn"], "decoder": acc["decoder"],
                    "post": total - acc["preprocess"] - acc["rpn"] - acc["decoder"], "masks": len(recs)})
        rates.append(rate())
    return {"per_image": per, "rates": rates, "prompts": gen.stats["prompts"], "decoder": gen.decoder.name,
            "code": str(Path(edgesam.__file__).parent.parent),
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}


def _matmul_rate():
    """-> a function measuring the 1-thread fp32 GEMM rate (GMAC/s, best of ORT MatMul and torch, 1024^3)."""
    import onnxruntime as ort
    import torch
    from onnx import TensorProto, helper

    n = 1024
    g = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "mm",
                          [helper.make_tensor_value_info(k, TensorProto.FLOAT, [n, n]) for k in "ab"],
                          [helper.make_tensor_value_info("c", TensorProto.FLOAT, [n, n])])
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    sess = ort.InferenceSession(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString(),
                                so, providers=["CPUExecutionProvider"])
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    ta = torch.from_numpy(a)

    def rate(runs: int = 3) -> float:
        best = float("inf")
        for _ in range(runs):
            t0 = time.perf_counter()
            sess.run(None, {"a": a, "b": a})
            t1 = time.perf_counter()
            ta @ ta
            best = min(best, t1 - t0, time.perf_counter() - t1)
        return n ** 3 / best / 1e9

    return rate


def run_variant(code_root: Path, spec: dict) -> dict:
    """``worker(spec)`` in a fresh interpreter with ``code_root`` first on the path."""
    env = dict(os.environ, PYTHONPATH=str(code_root), OMP_NUM_THREADS="1")
    # this file is loaded by path, so that ``edgesam`` comes from ``code_root`` only
    prog = ("import importlib.util, json, sys; s = importlib.util.spec_from_file_location('fullres', sys.argv[1]); "
            "m = importlib.util.module_from_spec(s); s.loader.exec_module(m); "
            "print('RESULT' + json.dumps(m.worker(json.loads(sys.argv[2]))))")
    out = subprocess.run([sys.executable, "-c", prog, str(Path(__file__).resolve()), json.dumps(spec)], env=env,
                         cwd=str(code_root), capture_output=True, text=True, check=False)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT")), None)
    if line is None:
        raise RuntimeError(f"variant {code_root} failed:\n{out.stderr[-3000:]}")
    return json.loads(line[len("RESULT"):])


def floor_gmacs(model, prompts: float) -> dict:
    """Encoder+RPN MACs and reference decoder MACs per prompt at the model's S."""
    import torch

    from benchmarks.common import count_macs
    from edgesam.models.rpn import EncoderWithRPN

    s = model.img_size
    x = torch.zeros(1, 3, s, s)
    with torch.no_grad():
        enc = count_macs(lambda: EncoderWithRPN(model.image_encoder, model.rpn).eval()(x))
        pd = model.as_prompt_decoder()
        emb = torch.zeros(1, 256, s // 16, s // 16)
        c = torch.tensor([[[10.0, 10.0], [200.0, 300.0]]] * 4)
        l = torch.tensor([[2.0, 3.0]] * 4)
        dec = count_macs(lambda: pd(emb, c, l)) / 4
    return {"encoder_rpn": enc / 1e9, "decoder_per_prompt": dec / 1e9, "per_image": (enc + prompts * dec) / 1e9}


def render(rows: list[tuple[str, dict]], floor: dict, cmd: str, desc: str, settings: dict, info: dict) -> str:
    lines = [f"Command: `{cmd}`", "",
             f"Machine: {info['cpu']}, ISA {info['isa']}; 1 intra-op thread per variant (one annotation actor); "
             f"1-min load average {info['load_start']:.1f} at start, {info['load_end']:.1f} at end (2 cores shared "
             "with other jobs); each variant's ratio to the floor "
             "uses the matmul rate measured in its own process around its images.", "",
             f"Images: {desc}. Weights: {info['weights']}. Settings: "
             + ", ".join(f"{k}={v}" for k, v in settings.items()) + ". Floor per image: "
             f"{floor['encoder_rpn']:.1f} GMAC encoder+RPN + prompts x {floor['decoder_per_prompt']:.2f} GMAC "
             "(reference decoder) = "
             f"{floor['per_image']:.0f} GMAC at 100 prompts.", "",
             "| code | decoder | s / image | resize to S | encoder + RPN | decoder | post-processing | post % | "
             "masks / image | matmul GMAC/s | floor s | x floor | peak RSS (GB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows:
        per = r["per_image"]
        m = {k: float(np.mean([p[k] for p in per])) for k in ("total", "preprocess", "rpn", "decoder", "post", "masks")}
        rate = max(r["rates"])
        prompts = r["prompts"] / (len(per) + 1)
        fl = (floor["encoder_rpn"] + prompts * floor["decoder_per_prompt"]) / rate
        lines.append(f"| {name} | {r['decoder']} | {m['total']:.1f} | {m['preprocess']:.2f} | {m['rpn']:.1f} | {m['decoder']:.1f} | "
                     f"{m['post']:.2f} | {100 * m['post'] / m['total']:.0f} % | {m['masks']:.0f} | {rate:.0f} | "
                     f"{fl:.1f} | {m['total'] / fl:.2f} | {r['peak_rss_gb']:.2f} |")
    return "\n".join(lines)


SETTINGS = {"mode": "rpn", "rpn_score_thresh": 0.0, "rpn_nms_iou": 1.0, "max_proposals": 100, "num_outputs": 1,
            "stability_score_thresh": 0.0, "pred_iou_thresh": 0.0, "mask_nms_iou": 1.0}


def main_fullres(args, cmd: str) -> int:
    """``benchmarks/everything.py --fullres``: export once, run the variants, write section ``everything-fullres``."""
    import tempfile

    import torch

    from benchmarks.common import load_average, machine_info, replace_section
    from benchmarks.decoder_fast import cpu_isa
    from benchmarks.everything import build_model
    from edgesam.export.onnx_export import export_all

    info = machine_info(1) | {"isa": cpu_isa(), "load_start": load_average()}
    torch.set_num_threads(1)
    model, random_weights = build_model(args.checkpoint, args.img_size, args.seed)
    info["weights"] = ("RANDOM student + RPN" if random_weights else f"`{args.checkpoint}`") + f", S = {args.img_size}"
    floor = floor_gmacs(model, SETTINGS["max_proposals"])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        export_all(model, tmp, checkpoint_sha256="bench")
        spec = {"onnx_dir": tmp, "cfg": SETTINGS, "images": args.images}
        variants = ([(f"before ({args.before})", Path(args.before))] if args.before else []) + [("after (this branch)", ROOT)]
        for name, root in variants:
            print(f"[fullres] running {name} ...", flush=True)
            rows.append((name, run_variant(root, spec)))
            print(f"[fullres] {name}: {rows[-1]}", flush=True)
    info["load_end"] = load_average()
    body = render(rows, floor, cmd, f"{args.images} photos from skimage.data (astronaut, coffee, chelsea) resized to "
                  "4000 x 3000 (12 MP), the same for every variant", SETTINGS, info)
    replace_section(args.out, "everything-fullres", "## Segment everything at full resolution, 12 MP, ONNX Runtime (issue 12)", body)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "floor": floor, "info": info}, indent=2, default=float))
    print(body)
    return 0
