#!/usr/bin/env bash
# The wheels that benchmarks/gpu.py needs on the lent GPU machine, pinned, into DIR (default .whl, git-ignored).
#
# That machine has Python 3.12 (x86-64) with torch + CUDA, numpy, opencv, scikit-image, pyarrow, pyyaml, tqdm
# and timm, and no network. It lacks pydantic (typed config), pycocotools (RLE), segment-anything (the
# prompt decoder's modules) and the peers' packages. All are pure Python except pydantic-core and
# pycocotools, whose cp312 manylinux wheels are fetched for that machine; three packages that PyPI has only
# as source (sam2, antlr4-python3-runtime, iopath) are built here into pure wheels. About 3 MiB in all.
#
# Usage:   bash scripts/gpu_wheels.sh [DIR]
# Then one device call, carrying the wheels (device tool `run`, carry [".whl"]), from the repository root:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && PYTHONPATH=/tmp/site:$PWD python3 benchmarks/gpu.py --json $OUT/gpu.json --md $OUT/gpu.md
# and here: python -m benchmarks.gpu --from-json <files_at>/gpu.json --out BENCHMARKS.md
set -euo pipefail
cd "$(dirname "$0")/.."
dest=${1:-.whl}
py=${PYTHON:-python3}
[ -x .venv/bin/python ] && py=${PYTHON:-.venv/bin/python}
mkdir -p "$dest"

target=(--python-version 3.12 --implementation cp --only-binary=:all:
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
pure=(segment-anything==1.0 pydantic==2.14.4 annotated-types==0.8.0 typing-inspection==0.4.5
      mobilesam-mirror==1.0.0 efficientsam==1.0.0 hydra-core==1.3.8 omegaconf==2.3.1 portalocker==4.4.2)
binary=(pydantic-core==2.50.5 pycocotools==2.0.11)
sources=(sam2==1.1.0 antlr4-python3-runtime==4.9.3 iopath==0.1.10)

"$py" -m pip download -q --no-deps -d "$dest" "${target[@]}" "${pure[@]}" "${binary[@]}"
# sam2's setup.py imports torch (from this environment) and would build a CUDA extension unless told not to
SAM2_BUILD_CUDA=0 "$py" -m pip wheel -q --no-deps --no-build-isolation -w "$dest" "${sources[@]}"
ls -l "$dest"/*.whl
du -cb "$dest"/*.whl | tail -1 | awk '{printf "total: %.1f MiB in %d wheels\n", $1 / 1048576, n}' n="$(ls "$dest"/*.whl | wc -l)"
cat <<EOT
device call (carry ["$dest"]), from the repository root:
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site $dest/*.whl && PYTHONPATH=/tmp/site:\$PWD python3 benchmarks/gpu.py --json \$OUT/gpu.json --md \$OUT/gpu.md
EOT
