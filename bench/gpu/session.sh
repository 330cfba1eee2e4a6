#!/usr/bin/env bash
# One GPU session: versions, copy bandwidth, the kernel tests on CUDA, the benchmarks, and a
# search for pretrained weights. Run from the repository root on the GPU machine; writes to $OUT.
# Usage: OUT=/tmp/out bash bench/gpu/session.sh [tests|bench|model|all]
# 'all' runs tests + bench (about 9 minutes on an H100); 'model' (end to end, with torch.compile)
# needs a call of its own under the device tool's 10-minute command limit.
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/inpctl-gpu}
mkdir -p "$OUT"
what=${1:-all}
stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }

{
  echo "date: $(stamp)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
  python3 -c "import torch, triton, timm, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'triton', triton.__version__, 'timm', timm.__version__, 'cuda', torch.version.cuda)"
  python3 - <<'PY'
import torch
x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize()
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
times = []
for _ in range(20):
    s.record(); y.copy_(x); e.record(); e.synchronize(); times.append(s.elapsed_time(e))
times.sort(); ms = times[len(times)//2]
print(f"copy bandwidth (read+write): {2 * x.numel() / ms / 1e6:.0f} GB/s")
PY
} 2>&1 | tee "$OUT/env.txt"
# Pretrained weights on this machine? (asked by the tuning issue; first, so a timeout cannot skip it)
{ ls -la ~/.cache/huggingface ~/.cache/torch 2>&1; timeout 60 find / -xdev \( -name '*.pth' -o -name '*.safetensors' -o -name '*.pt' \) -size +10M 2>/dev/null | head -50; } > "$OUT/weights_search.txt"

if [[ $what == tests || $what == all ]]; then
  python3 -m pytest -q tests/test_kernel_relu_attention.py tests/test_kernel_scoring.py 2>&1 | tee "$OUT/gpu_kernel_tests.log"
  python3 -m pytest -q tests/test_model.py tests/test_metrics.py tests/test_cli.py 2>&1 | tee "$OUT/gpu_other_tests.log"
fi
if [[ $what == bench || $what == all ]]; then
  for dt in bf16 fp16 fp32; do
    python3 -m inpctl bench attention --dtype $dt --batch 16 --json "$OUT/attention_$dt.json" 2>&1 | tee -a "$OUT/bench.log"
  done
  for dt in fp32 bf16; do
    python3 -m inpctl bench scoring --dtype $dt --json "$OUT/scoring_$dt.json" 2>&1 | tee -a "$OUT/bench.log"
  done
fi
if [[ $what == model ]]; then
  python3 -m inpctl bench model --compile --json "$OUT/model.json" 2>&1 | tee -a "$OUT/bench_model.log"
fi
echo "done $(stamp)"
