#!/bin/sh
# The GPU check with the working tree on PYTHONPATH (no install): sh benchmarks/gpu_check.sh --out gpu_check.json
ROOT="$(cd "$(dirname "$0")/.." && pwd)"; PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" exec "${PYTHON:-python3}" "$ROOT/benchmarks/gpu_check.py" "$@"
