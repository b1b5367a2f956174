"""House rules for the module graph: no import circles, and the library imports without Ray."""
from __future__ import annotations

import subprocess
import sys

from scripts.module_graph import cycles, discover, import_graph


def test_no_import_circles():
    graph = import_graph(discover())
    assert len(graph) > 40  # the scan found the packages
    assert cycles(graph) == []


def test_cycle_finder_finds_a_planted_circle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_library_imports_without_ray():
    code = ("import importlib, pkgutil, sys, edgesam\n"
            "for m in pkgutil.walk_packages(edgesam.__path__, 'edgesam.'):\n"
            "    if not m.name.endswith('__main__'):\n"
            "        importlib.import_module(m.name)\n"
            "print(sorted(k for k in sys.modules if k == 'ray' or k.startswith('ray.')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
