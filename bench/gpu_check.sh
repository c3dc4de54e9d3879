#!/usr/bin/env bash
# The GPU measurements in one call (issue 20): every table lands in OUTDIR as soon as it is measured,
# so a run cut off by the device's time limit keeps what it had.
#
#   bash bench/gpu_check.sh OUTDIR            # on the GPU machine: under 9 minutes on one H200
#   bash bench/gpu_check.sh OUTDIR --quick    # smoke run of the same steps on a CPU (a few minutes)
#
# Steps, each with its own time budget (seconds) so that one slow step cannot starve the rest:
#   env.txt       torch, CUDA, the GPU's name
#   speed.md      bench/speed.py: VGG-19 and ResNet-50 at 224 px, presets full / classifier / fc1_fc2 / head,
#                 (a) tutorial loop, (b) engine, (b2) next run on stored features, (s) synthetic step
#   memory.md     bench/memory_check.py --steps: the step estimate against live bytes and the allocator's peak
#   compile.md    bench/compile_cost.py: torch.compile's compile time against its per-step saving
#   cuda_tests.log the suite's CUDA tests
#   sweep.json    python -m core.sweep: a depth sweep of ResNet-18 on demo-target (the queue's members
#                 one after another on the GPU; a Ray variant joins with the cluster issue)
#
# The GPU machine has PyTorch but may lack the rest and has no network: wheels carried in .whl/
# (see the device tool's notes) are installed first when the imports fail.
set -uo pipefail
out=${1:?usage: bash bench/gpu_check.sh OUTDIR [--quick]}
quick=${2:-}
cd "$(dirname "$0")/.."
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
summary="$out/summary.txt"
: > "$summary"

if ! python -c "import streamlit, plotly, pandas, safetensors, pytest" 2>/dev/null; then
    if compgen -G ".whl/*.whl" > /dev/null; then
        python -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
    else
        python -m pip install -q streamlit plotly pandas safetensors pytest
    fi
fi

python - > "$out/env.txt" 2>&1 <<'PY'
import torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "CUDA", torch.version.cuda)
print("device:", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "CPU only")
PY

step() {  # step NAME BUDGET_S OUTPUT COMMAND...: run it under its budget, record its exit status
    local name=$1 budget=$2 output=$3
    shift 3
    local start=$SECONDS
    echo "== $name (budget ${budget} s)"
    timeout "$budget" "$@" > "$output" 2>&1
    local rc=$?
    echo "$name: exit $rc in $((SECONDS - start)) s$([ $rc = 124 ] && echo ' (cut off at its budget)')" | tee -a "$summary"
}

if [ "$quick" = "--quick" ]; then
    step speed 600 "$out/speed.log" python bench/speed.py --quick --out "$out/speed.md"
    step memory 300 "$out/memory.md" python bench/memory_check.py --steps --device cpu --batch-size 2
    step compile 600 "$out/compile.md" python bench/compile_cost.py --device cpu --presets head --steps 1 --size 32
    step cuda_tests 300 "$out/cuda_tests.log" python -m pytest -q -p no:cacheprovider tests/test_training.py tests/test_memory.py -k cuda
    step sweep 300 "$out/sweep.json" python -m core.sweep --kind depth --stages layer4 --arch resnet18 --dataset demo-target:10 \
        --weights none --image-size 32 --epochs 1 --device cpu --runs-dir "$out/runs" --json
else
    step speed 300 "$out/speed.log" python bench/speed.py --archs vgg19 resnet50 --out "$out/speed.md"
    step memory 60 "$out/memory.md" python bench/memory_check.py --steps --device cuda --batch-size 64
    step compile 110 "$out/compile.md" python bench/compile_cost.py --device cuda --arch resnet50 --size 224 --batch-size 64
    step cuda_tests 50 "$out/cuda_tests.log" python -m pytest -q -p no:cacheprovider tests/test_training.py tests/test_memory.py -k cuda
    step sweep 40 "$out/sweep.json" python -m core.sweep --kind depth --arch resnet18 --dataset demo-target \
        --weights none --image-size 64 --epochs 3 --device cuda --runs-dir "$out/runs" --json
fi
echo "tables in $out"; cat "$summary"
