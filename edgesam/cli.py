"""The ``edgesam`` command: one entry point over every pipeline.

    edgesam distill                                   # the main job on the embedded default
    edgesam distill --config sa1b-1pct train.storage_path=s3://bucket/runs
    edgesam cache | eval | export | annotate | serve | train-teacher | bench NAME ...
    edgesam <command> --help                          # every config key with its default and doc

Each subcommand is a thin layer: it forwards its arguments to the same ``main(argv)`` that
``python pipelines/X.py`` runs, so both spellings take the same ``--config NAME|PATH`` and
``key.sub=value`` overrides. Pipelines are imported only when their command runs, so ``edgesam``
itself (and ``edgesam.cli``) imports without Ray.
"""
from __future__ import annotations

import importlib
import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Command:
    """One subcommand: ``module:function`` to run and, where it has one, its typed config class."""

    target: str
    summary: str
    config: str | None = None  # "module:Class"
    default_config: str | None = None


COMMANDS: dict[str, Command] = {
    "cache": Command("pipelines.cache_teacher:main", "cache SAM teacher embeddings and masks to Parquet (Ray Data)",
                     "pipelines.cache_teacher:CacheConfig"),
    "distill": Command("pipelines.distill:main", "the main job: cache, distil steps 1-3 (Ray Train), eval, export",
                       "pipelines.distill_config:DistillConfig", "quickstart"),
    "eval": Command("pipelines.evaluate:main", "mIoU of a student checkpoint on a teacher cache"),
    "export": Command("edgesam.export.__main__:main", "ONNX (and TensorRT on GPU) export of a student"),
    "annotate": Command("pipelines.annotate:main", "label an image folder with segment-everything (COCO and more)",
                        "pipelines.annotate:AnnotateConfig", "annotate"),
    "serve": Command("serve.launch:main", "run the Ray Serve application (serve.app:edgesam) until Ctrl-C",
                     "serve.config:ServeAppConfig", "serve"),
    "train-teacher": Command("pipelines.train_teacher:main", "train a small SAM teacher on synthetic scenes",
                             "edgesam.teacher_train.loop:TeacherTrainConfig", "synthetic-teacher"),
    "bench": Command("edgesam.cli:run_benchmark", "run benchmarks/NAME.py (from a source checkout)"),
}


def _resolve(spec: str):
    module, _, attr = spec.partition(":")
    return getattr(importlib.import_module(module), attr)


def _usage() -> str:
    width = max(len(n) for n in COMMANDS)
    rows = "\n".join(f"  {name:<{width}}  {cmd.summary}" for name, cmd in COMMANDS.items())
    return (f"usage: edgesam <command> [--config NAME|PATH] [key.sub=value ...]\n\ncommands:\n{rows}\n\n"
            "`edgesam <command> --help` lists that command's options and config keys.")


def command_help(name: str) -> str:
    """The pipeline's own ``--help`` plus, for typed pipelines, every config key with default and doc."""
    from edgesam.config_help import describe

    cmd = COMMANDS[name]
    lines = [f"edgesam {name}: {cmd.summary}"]
    if cmd.config:
        lines.append(f"\nusage: edgesam {name} [--config NAME|PATH] [key.sub=value ...]"
                     + (f"   (default config: {cmd.default_config})" if cmd.default_config else ""))
        lines.append("\nconfig keys (key = default  # doc):")
        lines.append(describe(_resolve(cmd.config)))
    return "\n".join(lines)


def run_benchmark(argv: list[str]) -> int:
    """``edgesam bench NAME [args]`` runs ``benchmarks/NAME.py`` as ``__main__`` with ``args``."""
    bench_dir = REPO / "benchmarks"
    names = sorted(p.stem for p in bench_dir.glob("*.py") if p.stem not in ("common", "__init__"))
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: edgesam bench NAME [args]\n\nbenchmarks: " + (", ".join(names) or "(none: not a source checkout)"))
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in names:
        print(f"edgesam bench: no benchmark {name!r}; known: {names}", file=sys.stderr)
        return 2
    sys.argv = [str(bench_dir / f"{name}.py"), *rest]
    sys.path.insert(0, str(REPO))
    runpy.run_path(sys.argv[0], run_name="__main__")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"edgesam: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    cmd = COMMANDS[name]
    if cmd.config and any(a in ("-h", "--help") for a in rest):
        print(command_help(name))
        return 0
    if str(REPO) not in sys.path and (REPO / "pipelines").is_dir():
        sys.path.insert(0, str(REPO))  # a source checkout: pipelines/ and serve/ beside edgesam/
    try:
        fn = _resolve(cmd.target)
    except ModuleNotFoundError as exc:
        print(f"edgesam {name}: not available in this install ({exc})", file=sys.stderr)
        return 2
    result = fn(rest)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
