#!/bin/sh
# Which Faiss extra `make install` installs: prints `cpu` or `gpu`, or nothing when the environment
# already has a GPU build of Faiss (kept whatever FAISS says: it searches on the CPU as well, and the
# CPU wheel installed over it would break it, both wheels owning the module `faiss`).
#   FAISS   auto (default: gpu when `nvidia-smi -L` lists a GPU, else cpu), cpu or gpu
#   PYTHON  the environment's interpreter, asked whether its faiss has GPU support
set -eu
: "${PYTHON:?set PYTHON to the environment interpreter}"
build=${FAISS:-auto}
if [ "$build" = auto ]; then
    if nvidia-smi -L 2>/dev/null | grep -q '^GPU '; then build=gpu; else build=cpu; fi
fi
case $build in
    cpu|gpu) ;;
    *) echo "FAISS must be auto, cpu or gpu, not '$build'" >&2; exit 2 ;;
esac
if "$PYTHON" -c \
        'import sys, faiss; sys.exit(0 if hasattr(faiss, "StandardGpuResources") else 1)' 2>/dev/null; then
    echo "keeping the installed GPU build of Faiss (FAISS=${FAISS:-auto} resolved to $build)" >&2
    exit 0
fi
echo "$build"
