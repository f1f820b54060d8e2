#!/usr/bin/env bash
# Sets everything up (idempotent) and runs the project's main job or its tests.
#
#   ./run.sh demo            compile an NSA model, show the fusion report and the GE graphs
#   ./run.sh test [ARGS]     run the whole test suite (extra ARGS go to pytest)
#
# Needs only Python 3.10+ and the package registries: creates .venv, installs torch 2.13.0 (CPU build; pinned so
# pip never pulls a CUDA build), nsa_graph with its test extras, and the offline torchair (taken out of the
# matching torch_npu wheel; torch_npu itself is never installed).
set -euo pipefail
cd "$(dirname "$0")"

# torch_npu, if a machine has it without CANN, must not be autoloaded by `import torch`.
export TORCH_DEVICE_BACKEND_AUTOLOAD=0

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
.venv/bin/nsa-graph fetch-torchair >/dev/null

case "${1:-}" in
    demo)
        # the op (eager, compiled) -> fusion of plain PyTorch NSA code -> the GE graphs torchair builds
        .venv/bin/python examples/op_basics.py
        .venv/bin/python examples/nsa_attention_block.py
        exec .venv/bin/nsa-graph dump-ge ;;
    test) shift; exec .venv/bin/python -m pytest "$@" ;;
    *) echo "usage: ./run.sh demo | ./run.sh test [pytest args]" >&2; exit 2 ;;
esac
