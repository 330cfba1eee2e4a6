#!/usr/bin/env bash
# One GPU session in ONE device call of at most 8 minutes: provenance, a search for pretrained
# weights, the CUDA tests (kernels, fast path, runtime), the inference fast path against the fp32
# reference (ViT-B and ViT-S, batch 1/16/64), `inpctl bench model` (train step), `inpctl bench
# attention` (bf16/fp16/fp32) and `inpctl bench scoring`. Every step has its own timeout and the
# whole run a deadline (BUDGET_S, default 450 s), so a slow step costs its results, never the
# session; README.md + JSON/logs are written to $OUT whatever happens.
#
# Usage (repository root):
#   OUT=/tmp/out bash bench/gpu/session.sh          # the session ("all")
#   OUT=/tmp/out bash bench/gpu/session.sh tune     # optional second call: kernel autotuning logs,
#                                                   # batch sweeps, fast path with/without graphs
#   DRY_RUN=1 OUT=/tmp/dry bash bench/gpu/session.sh [all|tune]   # every step on CPU at tiny sizes
set -uo pipefail
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/inpctl-gpu}
MODE=${1:-all}
DRY_RUN=${DRY_RUN:-0}
# A dry run shares a small CPU: no deadline worth the name, and every step may take 10x longer.
if [[ $DRY_RUN == 1 ]]; then BUDGET_S=${BUDGET_S:-3600}; SCALE=10; else BUDGET_S=${BUDGET_S:-450}; SCALE=1; fi
mkdir -p "$OUT"
START=$(date +%s)
STEPS="$OUT/steps.tsv"
: > "$STEPS"
stamp() { date -u +%Y-%m-%dT%H:%M:%SZ; }
case $MODE in all|tune) ;; *) echo "usage: [DRY_RUN=1] OUT=dir bash $0 [all|tune]" >&2; exit 2 ;; esac

# step NAME MAX_SECONDS CMD...: runs CMD under `timeout`, never past the deadline (20 s kept for
# the README); output to $OUT/NAME.log; status to steps.tsv.
step() {
  local name=$1 max=$(( $2 * SCALE )); shift 2
  local left=$(( BUDGET_S - ($(date +%s) - START) - 20 ))
  local limit=$(( max < left ? max : left ))
  if (( limit < 5 )); then
    printf '%s\tskipped (deadline)\t0\n' "$name" >> "$STEPS"; echo "== $name: skipped (deadline)"; return
  fi
  echo "== $name (timeout ${limit}s)"
  local t0=$(date +%s) rc
  timeout -k 5 "$limit" "$@" > "$OUT/$name.log" 2>&1; rc=$?
  local status="ok"
  (( rc == 124 || rc == 137 )) && status="timed out after ${limit}s"
  (( rc != 0 && rc != 124 && rc != 137 )) && status="failed (exit $rc)"
  printf '%s\t%s\t%s\n' "$name" "$status" "$(( $(date +%s) - t0 ))" >> "$STEPS"
  tail -n 3 "$OUT/$name.log"; echo "   -> $status"
}

if [[ $DRY_RUN == 1 ]]; then
  DEVICE=cpu; export INPCTL_DRY_RUN=1
  ENCODERS="small"; CROP=56; BATCHES="1 2"; TRAIN_BATCH=2; REPEATS=2
  ATT_ARGS=(--n 64 --c 64 --heads 4 --batch 2 --repeats 2 --device cpu)
  SCO_ARGS=(--batch 2 --grid 8 --channels 32 --image-size 56 --out-size 32 --repeats 2 --device cpu)
  TESTS=(python3 -m pytest -q --collect-only tests/test_fast_path.py tests/test_runtime.py)
else
  DEVICE=cuda
  ENCODERS="base small"; CROP=392; BATCHES="1 16 64"; TRAIN_BATCH=16; REPEATS=10
  ATT_ARGS=(--batch 16 --repeats 20 --device cuda)
  SCO_ARGS=(--repeats 20 --device cuda)
  TESTS=(python3 -m pytest -q -rs -p no:cacheprovider)   # -rs: a skipped CUDA test must show
  TESTS+=(tests/test_fast_path.py tests/test_runtime.py tests/test_kernel_relu_attention.py tests/test_kernel_scoring.py)
  shopt -s nullglob; for f in tests/test_kernel_*.py; do [[ " ${TESTS[*]} " == *" $f "* ]] || TESTS+=("$f"); done; shopt -u nullglob
fi
export SESSION_DEVICE=$DEVICE SESSION_ENCODERS=$ENCODERS SESSION_CROP=$CROP SESSION_BATCHES=$BATCHES \
       SESSION_REPEATS=$REPEATS SESSION_OUT=$OUT

# --- provenance ------------------------------------------------------------------------------
{
  echo "date: $(stamp)"
  echo "mode: $MODE (dry run: $DRY_RUN)"
  echo "git commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo ' + uncommitted changes')"
  echo "command: OUT=\$OUT ${DRY_RUN:+DRY_RUN=$DRY_RUN }bash bench/gpu/session.sh $MODE"
  echo "host: $(hostname) cpus: $(nproc)"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader \
    || echo "gpu: none (nvidia-smi not found)"
} > "$OUT/env.txt"
step versions 60 python3 - <<'PY'
import importlib, os, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda)
for name in ("triton", "timm", "torchvision"):
    try:
        print(name, importlib.import_module(name).__version__)
    except Exception as exc:  # noqa: BLE001
        print(name, "unavailable:", exc.__class__.__name__)
if os.environ["SESSION_DEVICE"] == "cuda":
    print("device", torch.cuda.get_device_name(0), "capability", torch.cuda.get_device_capability(0))
    x = torch.empty(2**30, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
    for _ in range(3): y.copy_(x)
    torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(20):
        s.record(); y.copy_(x); e.record(); e.synchronize(); times.append(s.elapsed_time(e))
    times.sort()
    print(f"copy bandwidth (read+write of 1 GiB, median of 20): {2 * x.numel() / times[10] / 1e6:.0f} GB/s")
else:
    print("device cpu (dry run): no bandwidth measured")
PY
cat "$OUT/versions.log" >> "$OUT/env.txt"

# Pretrained weights on this machine? First, so no later timeout can skip it.
step weights_search 25 bash -c 'for d in ~/.cache/huggingface ~/.cache/torch ~/.cache/timm "${HF_HOME:-}" "${TORCH_HOME:-}"; do
    [[ -n $d && -d $d ]] && { echo "## $d"; ls -la "$d"; }; done
  echo "## files > 10 MB (*.pth, *.pt, *.safetensors, *.bin)"
  timeout 20 find / -xdev \( -name "*.pth" -o -name "*.pt" -o -name "*.safetensors" -o -name "*.bin" \) -size +10M \
    -not -path "/proc/*" 2>/dev/null | head -50'

# --- the inference fast path against the reference (the new measurement first) -------------------
FASTPATH_PY=$(cat <<'PY'
"""Inference img/s: fp32 eager reference vs bf16 fused eager vs the fast path (bf16 + CUDA graph)."""
import json, os, sys, time
import torch
from inp_former.benchmarks.timing import measure
from inp_former.config import ModelConfig, RunConfig
from inp_former.evaluate import score_batch
from inp_former.fast_path import FastScorer
from inp_former.model import INPFormer
from kernels.dispatch import kernel_mode

device = torch.device(os.environ["SESSION_DEVICE"])
crop, repeats = int(os.environ["SESSION_CROP"]), int(os.environ["SESSION_REPEATS"])
batches = [int(b) for b in os.environ["SESSION_BATCHES"].split()]
rows = []
for encoder in os.environ["SESSION_ENCODERS"].split():
    torch.manual_seed(0)
    cfg = RunConfig(model=ModelConfig(encoder=encoder, encoder_weights="random", resize=crop, crop=crop))
    model = INPFormer(cfg.model).to(device).eval()
    graphed = FastScorer(model, cfg, "decoder", "bf16", device)
    eager_bf16 = FastScorer(model, cfg, "decoder", "bf16", device, use_graphs=False)
    for batch in batches:
        images = torch.randn(batch, 3, crop, crop, generator=torch.Generator().manual_seed(batch)).to(device)
        with kernel_mode("reference"):
            ref_maps, _, _ = score_batch(model, images, cfg, "fp32")
            ref = measure(lambda: score_batch(model, images, cfg, "fp32"), device, repeats=repeats, max_seconds=15)
        paths = {"reference fp32 eager": (ref, ref_maps)}
        for name, scorer in (("fused bf16 eager", eager_bf16), ("fast path (bf16 + graph)", graphed)):
            t0 = time.perf_counter(); maps, _ = scorer(images); first_s = time.perf_counter() - t0
            paths[name] = (measure(lambda: scorer(images), device, repeats=repeats, max_seconds=15), maps)
            paths[name][0].first_call_s = first_s
        for name, (timing, maps) in paths.items():
            err = float((maps.float() - ref_maps).abs().max() / ref_maps.abs().max().clamp_min(1e-12))
            rows.append({"encoder": encoder, "crop": crop, "batch": batch, "path": name,
                         "median_ms": round(timing.median_ms, 3), "images_per_s": round(batch / timing.median_ms * 1e3, 1),
                         "speedup": round(ref.median_ms / timing.median_ms, 2), "map_max_rel_err": err,
                         "first_call_s": round(getattr(timing, "first_call_s", 0.0), 3), "peak_mem_mb": timing.peak_mem_mb})
            print(f"{encoder:5s} b={batch:3d} {name:26s} {rows[-1]['median_ms']:9.3f} ms "
                  f"{rows[-1]['images_per_s']:9.1f} img/s x{rows[-1]['speedup']:5.2f} err {err:.1e}", flush=True)
    print(f"{encoder}: {graphed.describe()}")
    rows.append({"encoder": encoder, "scorer": graphed.describe(), "mode": graphed.mode,
                 "fallback_reason": graphed.fallback_reason, "graphs": len(graphed.graphs)})
out = os.path.join(os.environ["SESSION_OUT"], "fast_path.json")
json.dump({"device": str(device), "torch": torch.__version__, "rows": rows}, open(out, "w"), indent=2, default=str)
PY
)
step fast_path_bench 150 python3 -c "$FASTPATH_PY"

if [[ $MODE == all ]]; then
  step tests 150 "${TESTS[@]}"
  for enc in $ENCODERS; do
    batch_flags=(); for b in $BATCHES; do batch_flags+=(--batch "$b"); done
    step "model_$enc" 90 python3 -m inpctl bench model --encoder "$enc" "${batch_flags[@]}" --train-batch "$TRAIN_BATCH" \
      --crop "$CROP" --repeats "$REPEATS" --device "$DEVICE" --json "$OUT/model_$enc.json"
  done
  for dt in bf16 fp16 fp32; do
    step "attention_$dt" 30 python3 -m inpctl bench attention --dtype "$dt" "${ATT_ARGS[@]}" --json "$OUT/attention_$dt.json"
  done
  for dt in fp32 bf16; do
    step "scoring_$dt" 30 python3 -m inpctl bench scoring --dtype "$dt" "${SCO_ARGS[@]}" --json "$OUT/scoring_$dt.json"
  done
else  # tune: which Triton configs the autotuners pick, and the batch sweeps they are tuned for
  export TRITON_PRINT_AUTOTUNING=1
  sweep=$([[ $DRY_RUN == 1 ]] && echo "1 2" || echo "1 4 16 64")
  for b in $sweep; do
    step "tune_attention_bf16_b$b" 40 python3 -m inpctl bench attention --dtype bf16 "${ATT_ARGS[@]}" --batch "$b" \
      --json "$OUT/tune_attention_bf16_b$b.json"
    step "tune_scoring_bf16_b$b" 30 python3 -m inpctl bench scoring --dtype bf16 "${SCO_ARGS[@]}" --batch "$b" \
      --json "$OUT/tune_scoring_bf16_b$b.json"
  done
fi

# --- README.md with provenance and every table found -------------------------------------------
python3 - "$OUT" "$MODE" "$DRY_RUN" <<'PY'
import glob, json, os, sys
out, mode, dry = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
env = open(os.path.join(out, "env.txt")).read().strip()
lines = [f"# inpctl GPU session ({mode}{', DRY RUN on CPU at tiny sizes: no numbers to keep' if dry else ''})", "",
         "```", env, "```", "", "## Steps", "", "| step | status | seconds |", "| --- | --- | ---: |"]
for row in open(os.path.join(out, "steps.tsv")).read().splitlines():
    name, status, seconds = row.split("\t")
    lines.append(f"| {name} | {status} | {seconds} |")
path = os.path.join(out, "fast_path.json")
if os.path.isfile(path):
    data = json.load(open(path))
    lines += ["", "## Inference: reference vs fast path", "",
              "| encoder | batch | path | median ms | img/s | × reference | first call s | map max rel err |",
              "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in data["rows"]:
        if "path" in r:
            lines.append(f"| {r['encoder']} | {r['batch']} | {r['path']} | {r['median_ms']} | {r['images_per_s']} | "
                         f"{r['speedup']} | {r['first_call_s']} | {r['map_max_rel_err']:.1e} |")
        else:
            lines.append(f"| {r['encoder']} | | scorer: {r['scorer']} | | | | | |")
for path in sorted(glob.glob(os.path.join(out, "model_*.json"))):
    data = json.load(open(path))
    lines += ["", f"## `inpctl bench model` {os.path.basename(path)} ({data.get('encoder')}, {data.get('crop')} px)", "",
              "| pass | path | batch | median ms | img/s | × reference |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in data.get("rows", []):
        lines.append(f"| {r.get('pass')} | {r.get('path')} | {r.get('batch')} | {r.get('ms', 0):.3f} | "
                     f"{r.get('img/s', 0):.1f} | {r.get('x ref', 0):.2f} |")
others = sorted(os.path.basename(p) for p in glob.glob(os.path.join(out, "*")) if not p.endswith("README.md"))
lines += ["", "Raw files: " + ", ".join(f"`{p}`" for p in others), ""]
open(os.path.join(out, "README.md"), "w").write("\n".join(lines))
PY
echo "done $(stamp) after $(( $(date +%s) - START )) s; see $OUT/README.md"
