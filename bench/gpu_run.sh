#!/usr/bin/env bash
# The GPU series, sized for one device command (about 9 minutes) inside a 15-minute lease.
#
# Here first:  bash bench/gpu_wheels.sh        (wheels the GPU image lacks, into .whl/)
# Then, through the device tool, from the repository root:
#   run(command="bash bench/gpu_run.sh", carry=[".whl"], timeout_s=600)
#
# Most wanted first: notebook against loradeck at the 0.5B shape (two repeats), chat at 0.5B,
# then notebook against loradeck at the 7B shape of the reference workload (one repeat). Each
# step has its own time limit inside the budget, and the training results are written after
# every run, so a series cut short still brings back what it measured; report.md renders them
# all with bench.report. Results then go to bench/results/ and docs/benchmarks.md.
#
# A dry run on a machine without a GPU checks the whole script at toy sizes:
#   GPU_RUN_DRY=1 OUT=/tmp/gpu-dry bash bench/gpu_run.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
py=${PYTHON:-python3}
budget=${GPU_RUN_BUDGET:-540}
start=$(date +%s)
exec > >(tee -a "$OUT/gpu_run.log") 2>&1
tee_pid=$!
# at the end, let tee write out the last lines before the script is counted as done
trap 'exec >&- 2>&-; wait "$tee_pid"' EXIT

if [ -n "${GPU_RUN_DRY:-}" ]; then
  device=cpu; small=demo:tiny; large=cpu-small
  train_size=(--steps 3 --warmup 1 --repeats 1 --rows 60 --batch 2 --accum 1 --max-length 256)
  large_size=("${train_size[@]}")
  chat_size=(--repeats 1 --new-tokens 8)
else
  device=cuda; small=qwen2-0.5b; large=mistral-7b
  train_size=(--steps 12 --warmup 3 --repeats 2 --rows 600)
  large_size=(--steps 8 --warmup 2 --repeats 1 --rows 400)
  chat_size=(--repeats 3 --new-tokens 128)
fi

left() { local n=$((budget - ($(date +%s) - start))); echo $((n > 0 ? n : 0)); }

# step NAME SECONDS COMMAND...: run COMMAND under min(SECONDS, what the budget has left)
step() {
  local name=$1 want=$2 have
  shift 2
  have=$(left)
  [ "$want" -lt "$have" ] || want=$have
  if [ "$want" -lt 30 ]; then
    echo "== $name: skipped, ${have}s left of the budget"
    return 0
  fi
  echo "== $name (at most ${want}s; $(($(date +%s) - start))s into the series)"
  timeout -k 10 "$want" "$@"
  echo "== $name: exit $? after $(($(date +%s) - start))s"
}

if [ -d .whl ] && [ -z "${GPU_RUN_DRY:-}" ]; then
  echo "== installing the carried wheels"
  "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || { echo "the carried wheels did not install"; exit 1; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  if ! "$py" -c "import datasets" >/dev/null 2>&1; then
    echo "datasets $(ls .whl/datasets-*.whl | sed 's/.*datasets-\([^-]*\).*/\1/') does not" \
         "import with this image's pyarrow; using the one in .whl/alt"
    rm -rf /tmp/site/datasets /tmp/site/datasets-*.dist-info
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
      --target /tmp/site .whl/alt/*.whl || exit 1
  fi
fi

echo "== versions and device"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" > "$OUT/nvidia-smi.txt"
head -n 15 "$OUT/nvidia-smi.txt"
DEVICE=$device "$py" - <<'EOF' || { echo "the libraries do not load; nothing was measured"; exit 1; }
import importlib
import os

for name in ("torch", "transformers", "trl", "peft", "accelerate", "bitsandbytes", "datasets",
             "pydantic", "loradeck.engine.config"):
    mod = importlib.import_module(name)
    print(f"{name} {getattr(mod, '__version__', '')} {mod.__file__}")
import torch

if os.environ["DEVICE"] == "cuda":
    import bitsandbytes.functional as F

    print("cuda", torch.version.cuda, torch.cuda.get_device_name(0),
          "bf16" if torch.cuda.is_bf16_supported() else "no bf16")
    q, _ = F.quantize_4bit(torch.randn(256, 256, device="cuda", dtype=torch.bfloat16),
                           quant_type="nf4")
    print("NF4 quantization on the GPU: ok", tuple(q.shape))
EOF

step "train $small" 200 "$py" -m bench.train_bench --mode full --device "$device" \
  --shape "$small" "${train_size[@]}" --timeout 180 --out "$OUT/train_bench-${small//:/-}.json"
step "chat $small" 110 "$py" -m bench.chat_bench --mode full --device "$device" \
  --shape "$small" "${chat_size[@]}" --timeout 100 --out "$OUT/chat_bench-${small//:/-}.json"
# one repeat at 7B: two arms of a 7B model's load and 8 steps take most of what is left
step "train $large" 280 "$py" -m bench.train_bench --mode full --device "$device" \
  --shape "$large" "${large_size[@]}" --timeout 260 --out "$OUT/train_bench-$large.json"

shopt -s nullglob
results=("$OUT"/*_bench-*.json)
if [ ${#results[@]} -gt 0 ]; then
  "$py" -m bench.report "${results[@]}" > "$OUT/report.md" && cat "$OUT/report.md"
fi
echo "== series done in $(($(date +%s) - start))s; results: ${results[*]:-none}"
