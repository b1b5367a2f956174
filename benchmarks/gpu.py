"""The GPU check in one call: the torch backend on CUDA, segment everything, distillation, accuracy and peers.

    PYTHONPATH=. python benchmarks/gpu.py --json OUT/gpu.json --md OUT/gpu.md  # CUDA: rows stop at --budget-s (420)
    python -m benchmarks.gpu --smoke                                    # the same code on the CPU, tiny sizes, seconds
    python -m benchmarks.gpu --from-json gpu.json --out BENCHMARKS.md   # put a run's table into BENCHMARKS.md

It runs on the lent GPU machine as that machine is (Python 3.12, torch + CUDA, numpy, opencv, scikit-image,
pyarrow, timm): the checkout on ``PYTHONPATH``, no install, and the few packages it lacks carried as wheels
fetched by ``scripts/gpu_wheels.sh`` (pinned; the exact device call is in that script's header).

**All weights are random** (no checkpoint can be downloaded): speed and memory do not depend on them, and the
accuracy section compares half precision with float32 of the same model, not with ground truth.

Sections (each row records its own warm-up, so compilation and graph capture are visible, not hidden):

* encoder images/s at batch 1, 8, 32: eager float32, half + channels_last, compiled, CUDA graphs,
  compiled + CUDA graphs;
* split decoder prompts/s at 1, 64 and 256 prompts per image, the same modes (image side once per image);
* segment everything on 12 MP photos, a 10 x 10 grid (100 prompts), device-resident: s/image, the share of
  each stage, peak GPU memory;
* distillation steps 1 and 2 at ``S`` px, batch 8, AMP (bf16 autocast), through :mod:`edgesam.distill` with
  random teacher embeddings: iterations/s and peak memory;
* accuracy: half against float32 mask IoU on scikit-image's photos, box and point prompts;
* peers in the same run (:mod:`benchmarks.peers`): SAM ViT-B / ViT-H, MobileSAM, EfficientViT-SAM-L0,
  SAM 2.1 Hiera-T image encoders, float32 and autocast half, against EdgeSAM's encoder in the same mode.

A row that fails records its error and the run goes on; rows past ``--budget-s`` are skipped and say so.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from benchmarks.common import replace_section
from edgesam.data.transforms import preprocess
from edgesam.inference.backends import TorchDecoder, TorchEncoder
from edgesam.inference.torch_options import TorchOptions
from edgesam.models import EdgeSAM

SECTION, HEADING = "gpu", "## GPU: torch backend on CUDA, everything, distillation, peers"


@dataclass(frozen=True)
class Sizes:
    """What one run measures: ``img_size`` S of the encoder input, encoder batches, prompts per decoder call,
    photo size (H, W) for segment everything, grid side, distillation batch, timed iterations and warm-ups,
    the peers' batch, photos used (of scikit-image's three) and prompts of each kind in the accuracy check."""

    img_size: int
    batches: tuple[int, ...]
    prompts: tuple[int, ...]
    photo_hw: tuple[int, int]
    grid: int
    distill_batch: int
    iters: int
    warmup: int
    peer_batch: int
    photos: int
    accuracy_prompts: int


FULL = Sizes(1024, (1, 8, 32), (1, 64, 256), (3000, 4000), 10, 8, 20, 3, 8, 3, 32)
SMOKE = Sizes(64, (1,), (3,), (96, 128), 2, 1, 1, 0, 1, 1, 8)


def modes(half: str, compile_backend: str) -> dict[str, TorchOptions]:
    """The torch backend settings compared in the encoder and decoder sections."""
    fast = dict(dtype=half, channels_last=True, fuse=True, split_decoder=True, compile_backend=compile_backend)
    return {"eager fp32": TorchOptions(split_decoder=True),
            f"{half} + channels_last": TorchOptions(**fast),
            f"{half} compiled": TorchOptions(**fast, compile=True),
            f"{half} CUDA graphs": TorchOptions(**fast, cuda_graphs=True),
            f"{half} compiled + CUDA graphs": TorchOptions(**fast, compile=True, cuda_graphs=True)}


class Bench:
    """Timing, peak memory and the time budget of one run on ``device``; collects the rows."""

    def __init__(self, device: str, budget_s: float) -> None:
        self.device = device
        self.cuda = device.startswith("cuda")
        self.budget_s = budget_s
        self.t0 = time.perf_counter()
        self.rows: list[dict] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2 ** 30 if self.cuda else None

    def time(self, fn: Callable[[], object], iters: int, warmup: int) -> tuple[float, float]:
        """-> (seconds per call over ``iters`` calls, seconds of the ``warmup`` calls before them)."""
        self.sync()
        t = time.perf_counter()
        for _ in range(warmup):
            fn()
        self.sync()
        warm = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(iters):
            fn()
        self.sync()
        return (time.perf_counter() - t) / iters, warm

    def row(self, section: str, name: str, run: Callable[[], dict], needs_cuda: bool = False) -> dict:
        """Run one measurement; a failure or the budget makes a row that says why, and the run goes on."""
        row = {"section": section, "name": name}
        if needs_cuda and not self.cuda:
            row["note"] = "skipped: needs CUDA"
        elif self.elapsed() > self.budget_s:
            row["note"] = f"skipped: time budget ({self.budget_s:.0f} s) spent"
        else:
            self.reset_peak()
            try:
                row.update(run())
                row.setdefault("peak_gib", self.peak_gib())
            except Exception as e:  # noqa: BLE001 - a failed row is a result, recorded in the table
                row["note"] = f"error: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                traceback.print_exc()
        row["at_s"] = round(self.elapsed(), 1)
        self.rows.append(row)
        print(json.dumps(row), flush=True)
        return row


def photos(hw: tuple[int, int], n: int = 3) -> list[np.ndarray]:
    """The first ``n`` of scikit-image's bundled photos (astronaut, coffee, chelsea) resized to ``hw`` (H, W),
    uint8 RGB."""
    import cv2
    from skimage import data

    return [cv2.resize(img, (hw[1], hw[0]), interpolation=cv2.INTER_LINEAR)
            for img in (data.astronaut(), data.coffee(), data.chelsea())[:n]]


def bench_encoder(b: Bench, model: EdgeSAM, sz: Sizes, opts: dict[str, TorchOptions]) -> None:
    s = sz.img_size
    for mode, o in opts.items():
        enc: list[TorchEncoder] = []
        for batch in sz.batches:
            def run(batch: int = batch, o: TorchOptions = o) -> dict:
                if not enc:
                    enc.append(TorchEncoder(model.image_encoder, s, b.device, o))
                x = torch.randn(batch, 3, s, s, device=b.device)
                per_call, warm = b.time(lambda: enc[0].tensors(x), sz.iters, sz.warmup)
                return {"mode": mode, "batch": batch, "value": batch / per_call, "unit": "images/s",
                        "warmup_s": warm}

            b.row("encoder", f"{mode}, batch {batch}", run, needs_cuda=o.cuda_graphs)


def bench_decoder(b: Bench, model: EdgeSAM, sz: Sizes, opts: dict[str, TorchOptions]) -> None:
    s = sz.img_size
    emb = torch.randn(1, 256, s // 16, s // 16, device=b.device)
    gen = np.random.default_rng(0)
    for mode, o in opts.items():
        dec: list[TorchDecoder] = []
        for n in sz.prompts:
            def run(n: int = n, o: TorchOptions = o) -> dict:
                if not dec:
                    dec.append(TorchDecoder(model.as_prompt_decoder(), b.device, o))
                coords = torch.as_tensor(gen.random((n, 2, 2), np.float32) * s, device=b.device)
                labels = torch.tensor([[1.0, -1.0]], device=b.device).expand(n, 2).contiguous()
                e = emb.to(o.torch_dtype)
                per_call, warm = b.time(lambda: dec[0].decode_tensors(e, coords, labels), sz.iters, sz.warmup)
                return {"mode": mode, "prompts": n, "value": n / per_call, "unit": "prompts/s", "warmup_s": warm}

            b.row("split decoder", f"{mode}, {n} prompts", run, needs_cuda=o.cuda_graphs)


def bench_everything(b: Bench, model: EdgeSAM, sz: Sizes, opts: dict[str, TorchOptions]) -> None:
    from edgesam.inference.everything import EverythingConfig, EverythingGenerator

    imgs = photos(sz.photo_hw, sz.photos)
    n = sz.grid * sz.grid
    cfg = EverythingConfig(mode="grid", points_per_side=sz.grid, points_per_batch=n)
    for mode, o in opts.items():

        def run(o: TorchOptions = o) -> dict:
            gen = EverythingGenerator.from_model(model, cfg, device=b.device, torch_options=o)
            t = time.perf_counter()
            gen.generate(imgs[0])  # warm-up: compilation, graph capture, cuDNN autotuning
            b.sync()
            warm = time.perf_counter() - t
            gen.timings = dict.fromkeys(gen.timings, 0.0)
            masks = 0
            t = time.perf_counter()
            for img in imgs:
                masks += len(gen.generate(img))
            b.sync()
            per_image = (time.perf_counter() - t) / len(imgs)
            total = sum(gen.timings.values()) or 1.0
            share = {k: round(v / total, 3) for k, v in gen.timings.items()}
            return {"mode": mode, "prompts": n, "value": per_image, "unit": "s/image", "warmup_s": warm,
                    "share": share, "masks_per_image": masks / len(imgs),
                    "photo": f"{sz.photo_hw[1]}x{sz.photo_hw[0]}"}

        b.row("everything", f"{mode}, {n} grid prompts", run, needs_cuda=o.cuda_graphs)


def _box_and_point_prompts(s: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n box prompts then n point prompts (each point with SAM's padding point) spread over the S frame."""
    g = np.random.default_rng(7)
    c = g.uniform(0.15, 0.85, (n, 2)) * s
    wh = g.uniform(0.08, 0.4, (n, 2)) * s
    boxes = np.stack([c - wh / 2, c + wh / 2], axis=1).clip(0, s - 1)
    pts = np.stack([c, np.zeros_like(c)], axis=1)
    coords = np.concatenate([boxes, pts]).astype(np.float32)
    labels = np.array([[2, 3]] * n + [[1, -1]] * n, np.float32)
    return coords, labels


def bench_accuracy(b: Bench, model: EdgeSAM, sz: Sizes, half: str) -> None:
    s = sz.img_size
    imgs = photos((512, 683) if s >= 512 else (96, 128), sz.photos)
    k = sz.accuracy_prompts
    coords, labels = _box_and_point_prompts(s, k)
    ref_opts = TorchOptions(split_decoder=True)
    half_opts = TorchOptions(dtype=half, channels_last=True, fuse=True, split_decoder=True)

    def run() -> dict:
        ref_e, ref_d = TorchEncoder(model.image_encoder, s, b.device, ref_opts), \
            TorchDecoder(model.as_prompt_decoder(), b.device, ref_opts)
        h_e, h_d = TorchEncoder(model.image_encoder, s, b.device, half_opts), \
            TorchDecoder(model.as_prompt_decoder(), b.device, half_opts)
        ious = {"box": [], "point": []}
        emb_err = []
        for img in imgs:
            x, _ = preprocess(img, s)
            e_ref, e_h = ref_e(x.numpy()), h_e(x.numpy())
            emb_err.append(float(np.linalg.norm(e_h - e_ref) / np.linalg.norm(e_ref)))
            m_ref, _ = ref_d(e_ref, coords, labels)
            m_h, _ = h_d(e_h, coords, labels)
            for i in range(len(coords)):
                a, c = m_ref[i, 0] > 0, m_h[i, 0] > 0
                frac = a.mean()
                if 0.001 < frac < 0.999:  # a mask, not an empty or full map
                    ious["box" if labels[i, 0] == 2 else "point"].append(float((a & c).sum() / (a | c).sum()))
        return {"mode": f"{half} vs fp32", "value": float(np.mean(ious["box"] + ious["point"])), "unit": "mask IoU",
                "box_iou": float(np.mean(ious["box"])) if ious["box"] else None,
                "point_iou": float(np.mean(ious["point"])) if ious["point"] else None,
                "masks_compared": len(ious["box"]) + len(ious["point"]), "embedding_rel_err": max(emb_err)}

    b.row("accuracy", f"{half} vs fp32, {len(imgs)} photos, {k} box + {k} point prompts", run)


def bench_distill(b: Bench, sz: Sizes) -> None:
    from edgesam.distill import encoder_kd_step, freeze_for_prompt_kd, prompt_kd_step
    from edgesam.models.prompt_decoder import PromptDecoder, build_mask_decoder, build_prompt_encoder

    s, bs = sz.img_size, sz.distill_batch
    dev = b.device
    amp = torch.bfloat16

    def batch() -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]], list[dict]]:
        images = torch.randn(bs, 3, s, s, device=dev)
        teacher = torch.randn(bs, 256, s // 16, s // 16, device=dev, dtype=torch.float16)  # cached teacher: fp16
        g = np.random.default_rng(0)
        prompts = []
        for _ in range(bs):
            lo = g.uniform(0, 0.6, (16, 2)) * s
            hi = lo + g.uniform(0.1, 0.4, (16, 2)) * s
            prompts.append({"boxes": np.concatenate([lo, hi], 1).astype(np.float32),
                            "points": ((lo + hi) / 2).astype(np.float32)})
        return images, teacher, [(s, s)] * bs, prompts

    def step1() -> dict:
        torch.manual_seed(0)
        student = EdgeSAM(s).to(dev).train()
        opt = torch.optim.AdamW(student.image_encoder.parameters(), lr=1e-4)
        images, teacher, hw, _ = batch()

        def it() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.split(":")[0], dtype=amp):
                loss, _ = encoder_kd_step(student.image_encoder, images, teacher, hw, s)
            loss.backward()
            opt.step()

        per_it, warm = b.time(it, max(1, sz.iters // 2), sz.warmup)
        return {"mode": "AMP bf16", "batch": bs, "value": 1 / per_it, "unit": "it/s", "warmup_s": warm}

    def step2() -> dict:
        torch.manual_seed(0)
        student = freeze_for_prompt_kd(EdgeSAM(s).to(dev).train())
        teacher_pd = PromptDecoder(build_prompt_encoder(s), build_mask_decoder()).to(dev).eval().requires_grad_(False)
        opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-4)
        images, teacher, hw, prompts = batch()
        kinds = iter(["box", "point"] * 100)

        def it() -> None:
            opt.zero_grad(set_to_none=True)
            with torch.autocast(dev.split(":")[0], dtype=amp):
                loss, _ = prompt_kd_step(student, teacher_pd, images, teacher, prompts, hw, next(kinds))
            loss.backward()
            opt.step()

        per_it, warm = b.time(it, max(1, sz.iters // 2), sz.warmup)
        return {"mode": "AMP bf16", "batch": bs, "value": 1 / per_it, "unit": "it/s", "warmup_s": warm,
                "prompts_per_image": 16, "decode_iters": 2}

    b.row("distill", f"step 1 (encoder KD), {s} px, batch {bs}", step1)
    b.row("distill", f"step 2 (prompt-in-the-loop, box/point alternating), {s} px, batch {bs}", step2)


def bench_peers(b: Bench, model: EdgeSAM, sz: Sizes, half: str, smoke: bool) -> None:
    """EdgeSAM's encoder and each peer's (random weights, their own input sizes) in float32 and autocast half.
    The smoke run times EdgeSAM only: the peers run at 1024 px, minutes on a CPU (``benchmarks/encoders.py``
    measures them there, and ``tests/test_peers.py`` builds them)."""
    from benchmarks import peers

    dtype = torch.float16 if half == "fp16" else torch.bfloat16
    dev_type = b.device.split(":")[0]
    builds: list[tuple[str, Callable[[], tuple[torch.nn.Module, int]]]] = [
        ("EdgeSAM (RepViT-M1)", lambda: (model.image_encoder, sz.img_size))]
    for key, peer in peers.PEERS.items():
        builds.append((peer.name, lambda key=key: peers.build_peer(key, device=b.device)[1:]))
    for label, build in builds:
        for amp in (False, True):
            def run(build: Callable[[], tuple[torch.nn.Module, int]] = build, amp: bool = amp) -> dict:
                try:
                    module, size = build()
                except peers.PeerUnavailable as e:
                    return {"note": f"skipped: not installed ({e.pip})"}
                module = module.to(b.device).eval()
                x = torch.randn(sz.peer_batch, 3, size, size, device=b.device)

                @torch.inference_mode()
                def call() -> None:
                    with torch.autocast(dev_type, dtype=dtype, enabled=amp):
                        module(x)

                per_call, warm = b.time(call, max(1, sz.iters // 2), sz.warmup)
                return {"mode": f"autocast {half}" if amp else "fp32", "batch": sz.peer_batch, "input": size,
                        "value": sz.peer_batch / per_call, "unit": "images/s", "warmup_s": warm}

            name = f"{label}, {'autocast ' + half if amp else 'fp32'}"
            if smoke and not label.startswith("EdgeSAM"):
                b.rows.append({"section": "peers", "name": name, "note": "skipped in the smoke run (1024 px peers)"})
                continue
            b.row("peers", name, run)


SECTIONS = ["encoder", "split decoder", "everything", "accuracy", "distill", "peers"]


def _mode_order(row: dict) -> tuple[int, float]:
    """Table order within a section: by mode as :func:`modes` lists them, then batch / prompt count."""
    order = ["eager fp32", "+ channels_last", "compiled", "CUDA graphs", "compiled + CUDA graphs"]
    name = row["name"]
    rank = max((i for i, m in enumerate(order) if f" {m}," in f" {name}" or name.startswith(m)), default=0)
    return rank, float(row.get("batch") or row.get("prompts") or 0)


def render(meta: dict, rows: list[dict]) -> str:
    """The markdown section: run facts, then one table per section."""
    lines = [f"**All weights are random** (speed and memory do not depend on them). Command: `{meta['command']}`",
             "",
             f"- {meta['date']}; device: {meta['device']}; torch {meta['torch']}, CUDA {meta['cuda']}, Python "
             f"{meta['python']}; half dtype {meta['half']}; S = {meta['sizes']['img_size']}; "
             f"{meta['sizes']['iters']} timed calls after {meta['sizes']['warmup']} warm-up calls per row; "
             f"total {meta['total_s']:.0f} s",
             "- `warm-up (s)`: the warm-up calls, which include compilation and CUDA-graph capture.", ""]

    def fmt(v: object) -> str:
        if v is None:
            return ""
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        if isinstance(v, dict):
            return ", ".join(f"{k} {fmt(x)}" for k, x in v.items())
        return str(v)

    for section in sorted(dict.fromkeys(r["section"] for r in rows), key=SECTIONS.index):
        sec = sorted((r for r in rows if r["section"] == section), key=_mode_order)
        extra = [k for k in ("share", "masks_per_image", "box_iou", "point_iou", "embedding_rel_err",
                             "masks_compared") if any(k in r for r in sec)]
        ratio = section == "peers"
        head = ["row", "value", "unit", "warm-up (s)", "peak GPU (GiB)", *extra] + (["EdgeSAM / this"] if ratio else [])
        lines += [f"**{section}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        base = {r.get("mode"): r["value"] for r in sec if r["name"].startswith("EdgeSAM") and "value" in r}
        for r in sec:
            cells = [r["name"], fmt(r.get("value")), r.get("unit", ""), fmt(r.get("warmup_s")), fmt(r.get("peak_gib")),
                     *[fmt(r.get(k)) for k in extra]]
            if ratio:
                v, ref = r.get("value"), base.get(r.get("mode"))
                cells.append(f"{ref / v:.1f}x" if v and ref else "")
            if r.get("note"):
                cells[1] = r["note"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the same code on the CPU at tiny sizes (< 60 s)")
    p.add_argument("--device", default=None, help="default: cuda when available (never with --smoke), else cpu")
    p.add_argument("--half", choices=("fp16", "bf16"), default="fp16")
    p.add_argument("--budget-s", type=float, default=None, help="skip rows after this many seconds (default 420; "
                                                                 "smoke 100)")
    p.add_argument("--sections", default="encoder,decoder,everything,accuracy,distill,peers")
    p.add_argument("--json", default="runs/gpu/gpu.json", help="where the rows go (JSON)")
    p.add_argument("--md", default="runs/gpu/gpu.md", help="where the table goes (markdown)")
    p.add_argument("--out", default=None, help="also replace this file's gpu section (BENCHMARKS.md)")
    p.add_argument("--from-json", default=None, help="render an earlier run's JSON instead of measuring")
    a = p.parse_args(argv)
    if a.from_json:
        run = json.loads(Path(a.from_json).read_text())
        text = render(run["meta"], run["rows"])
    else:
        sz = SMOKE if a.smoke else FULL
        device = a.device or ("cuda" if torch.cuda.is_available() and not a.smoke else "cpu")
        budget = a.budget_s if a.budget_s is not None else (100.0 if a.smoke else 420.0)
        if device.startswith("cuda"):
            torch.backends.cudnn.benchmark = True
        else:  # tiny tensors: one thread, no OpenMP barrier spinning against other work on the cores
            torch.set_num_threads(1)
        b = Bench(device, budget)
        torch.manual_seed(0)
        model = EdgeSAM(sz.img_size).eval()
        # smoke: torch.compile traces the full graph without generating code (inductor takes minutes on a CPU)
        opts = modes(a.half, "eager" if a.smoke else "inductor")
        wanted = set(a.sections.split(","))
        # every section first without compilation, then the compiled modes: if compiling eats the time
        # budget, only compiled rows are skipped
        eager = {k: o for k, o in opts.items() if not o.compile}
        comp = {k: o for k, o in opts.items() if o.compile}
        best_eager, best_comp = f"{a.half} + channels_last", f"{a.half} compiled + CUDA graphs"
        steps = [("encoder", lambda: bench_encoder(b, model, sz, eager)),
                 ("decoder", lambda: bench_decoder(b, model, sz, eager)),
                 ("everything", lambda: bench_everything(b, model, sz, {best_eager: opts[best_eager]})),
                 ("accuracy", lambda: bench_accuracy(b, model, sz, a.half)),
                 ("distill", lambda: bench_distill(b, sz)),
                 ("peers", lambda: bench_peers(b, model, sz, a.half, a.smoke)),
                 ("encoder", lambda: bench_encoder(b, model, sz, comp)),
                 ("decoder", lambda: bench_decoder(b, model, sz, comp)),
                 ("everything", lambda: bench_everything(b, model, sz, {best_comp: opts[best_comp]}))]
        for name, step in steps:
            if name in wanted:
                step()
        args = sys.argv[1:] if argv is None else argv
        meta = {"command": " ".join(["python benchmarks/gpu.py", *args]),
                "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                "device": torch.cuda.get_device_name() if device.startswith("cuda") else f"CPU ({platform.processor() or 'unknown'})",
                "torch": torch.__version__, "cuda": torch.version.cuda, "python": platform.python_version(),
                "half": a.half, "sizes": asdict(sz), "smoke": a.smoke, "total_s": b.elapsed()}
        run = {"meta": meta, "rows": b.rows}
        for path in (a.json, a.md):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(run, indent=1) + "\n")
        text = render(meta, b.rows)
        Path(a.md).write_text(text + "\n")
    if a.out:
        replace_section(a.out, SECTION, HEADING, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
