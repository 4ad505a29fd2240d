#!/usr/bin/env bash
# Installs sagnn-lightning and its dependencies into the active Python environment.
# torch first, pinned: a bare `torch` requested by another package would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,triton,docs]"
# matbench 0.6 hard-pins ancient scipy/scikit-learn that do not build on Python 3.11; its code works beside matminer 0.10
python -m pip install -q --no-deps "matbench==0.6"
