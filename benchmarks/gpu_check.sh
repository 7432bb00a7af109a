#!/usr/bin/env bash
# The GPU check, one short run on a lent GPU machine (CI never has one). Prints the figures and
# writes them as JSON to $OUT (or outputs/gpu_check):
#   1. GPO training throughput and MFU of our loop: a 1.1B Llama (TinyLlama's shape), bf16
#      autocast, 30 steps of 16 pairs (prompts 256, responses 128), in one process
#      (benchmarks/gpu_train.py). When .baseline/gpo_core exists (an older gpo_core, e.g.
#      `git archive COMMIT gpo_core | tar -x -C .baseline`), the same run with it, for a ratio;
#      two alternating rounds of each.
#   2. The generation benchmark's --model large ratio (vLLM vs transformers), where vLLM is
#      installed on the machine.
#   3. The same model with strategy fsdp (FSDP2 through one Ray Train worker) in bf16-pure and in
#      mixed bf16: the sharded path's tokens/s, MFU and peak memory on one GPU.
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-outputs/gpu_check}
mkdir -p "$out" /tmp/gpo-gpu-check
python=${PYTHON:-python3}
export TRANSFORMERS_VERBOSITY=error HF_HUB_DISABLE_PROGRESS_BARS=1 PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
site=${PYTHONPATH:-}
train() {  # LABEL CODE_ROOT ARGS...
    local label=$1 root=$2
    shift 2
    PYTHONPATH="$root${site:+:$site}" timeout 300 $python benchmarks/gpu_train.py --label "$label" \
        --workdir /tmp/gpo-gpu-check --json "$out/train-$label.json" "$@" || echo "train $label: failed ($?)"
}
# Alternating rounds, so that neither side gains from running second (a warmer GPU, cached files).
for round in 1 2; do
    if [ -d .baseline/gpo_core ]; then
        train "baseline-$round" .baseline --steps 30 --batch 16 --precision bf16
    fi
    train "ours-$round" . --steps 30 --batch 16 --precision bf16
done
for precision in bf16-pure bf16; do
    train "fsdp-$precision" . --steps 30 --batch 16 --precision "$precision" --strategy fsdp
done
if $python -c "import vllm" 2>/dev/null; then
    PYTHONPATH=".${site:+:$site}" timeout 300 $python benchmarks/generation_throughput.py --model large \
        | tee "$out/generation.txt"
else
    echo "generation ratio: vllm is not installed on this machine; skipped"
fi
