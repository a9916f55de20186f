#!/usr/bin/env bash
# ferfast's one-call GPU check, for a lent GPU machine (one H200; no internet, no venv; system python with torch
# 2.11+cu130, triton, pytest, pytest-benchmark, nvcc 13.0, cmake, ninja, scikit-build-core, pybind11).
#
#   bash benchmarks/gpu_check.sh            # from anywhere; it runs in the repository root
#
# Steps: versions -> build + editable install of the extension from source -> python -m ferfast.info ->
# GPU tests (-m "cuda or triton") -> the rest of the tests -> the CUDA benchmarks (masked_patch_mse first, then
# the other MAE ops, then face-IoU Mixup (SSFER stage 1: the step, with the ssfer-eager baseline, and the mixing
# alone) and fixmatch_loss, then whole training steps (benchmarks/bench_train_step.py: MAE ViT-B/16 pretraining
# at batch 64 and 128 and the stage-1 ViT-B/16 face-IoU Mixup step at batch 32, bf16 autocast + fused AdamW,
# images/s with ferfast's ops vs the reference ops), then the torch.compile baselines; JSON in
# benchmarks/results/gpu_*.json, merged into benchmarks/results/gpu.json) -> benchmarks/report.py of them (the
# training steps in their own images/s table), ending with the targets: masked_patch_mse
# fwd+bwd bandwidth as a fraction of the GPU's measured copy bandwidth (target >= 0.8), the mixing's
# (face_mixup) fraction of copy bandwidth (>= 0.5), the stage-1 step's speedups over ssfer-eager (>= 4x) and
# torch.compile (>= 1.5x), and fixmatch_loss against torch.compile (faster). The data tests run in "the rest"
# (the torch loader; the GPU machine has no DALI), and benchmarks/bench_loader.py's loader_to_gpu measures the
# torch loader feeding the GPU (pinned batches, non_blocking copies; JSON in gpu_loader.json).
#
# The whole run stays under GPU_CHECK_BUDGET_S (default 560 s): every step has its own `timeout`, and each
# keeps back the time the later steps need. A failing step is reported and the script goes on; it exits 1
# at the end when any step failed (the bandwidth target is reported, not enforced; GPU_CHECK_STRICT=1
# enforces it). With $OUT set, the log, the JSON files and the report are copied there.
#
# Knobs: PYTHON (python3), GPU_CHECK_BUDGET_S, TORCH_CUDA_ARCH_LIST (9.0), CUDA_HOME, FERFAST_BUILD_CUDA (ON),
# BENCH_K (pytest -k expression of the benchmarks; default B64: the ViT-B/16 shape only; empty: all shapes),
# BENCH_ARGS (more pytest args for the benchmarks), TRAIN_K (pytest -k expression of the training-step benchmarks;
# default base: the ViT-B/16 shapes; empty: the demo models too), TRAIN_ROUNDS (their timed rounds, default 10).
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-560}
BENCH_K=${BENCH_K-B64}
TRAIN_K=${TRAIN_K-base}
TRAIN_ROUNDS=${TRAIN_ROUNDS:-10}
BENCH_ARGS=${BENCH_ARGS:-}
RESULTS=benchmarks/results
LOGS=$RESULTS/gpu_logs
mkdir -p "$RESULTS" "$LOGS"
export PY RESULTS LOGS
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1

TEE_PID=
if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  exec > >(tee "$OUT/gpu_check.log") 2>&1
  TEE_PID=$!
fi
# finish RC: flush the log copy in $OUT, then exit RC.
finish() {
  if [ -n "$TEE_PID" ]; then
    exec >&- 2>&-
    wait "$TEE_PID" 2>/dev/null || true
  fi
  exit "$1"
}

FAILED=()
HAVE_TIMEOUT=1
command -v timeout >/dev/null 2>&1 || HAVE_TIMEOUT=0

# step NAME CAP_S RESERVE_S CMD...: runs CMD with a limit of min(CAP_S, time left - RESERVE_S).
step() {
  local name=$1 cap=$2 reserve=$3
  shift 3
  local left=$((BUDGET_S - SECONDS - reserve))
  local limit=$((cap < left ? cap : left))
  echo
  echo "=== [$name] start at t=${SECONDS}s, limit ${limit}s ==="
  if ((limit < 5)); then
    echo "--- [$name] SKIPPED: out of time (budget ${BUDGET_S}s)"
    FAILED+=("$name: skipped, out of time")
    return 1
  fi
  local t0=$SECONDS rc
  if ((HAVE_TIMEOUT)); then  # bash -c: CMD may be one of the exported functions below
    timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@"
  else
    "$@"
  fi
  rc=$?
  echo "--- [$name] rc=$rc, $((SECONDS - t0))s (t=${SECONDS}s)"
  if ((rc == 124 || rc == 137)); then
    FAILED+=("$name: timed out after ${limit}s")
  elif ((rc != 0)); then
    FAILED+=("$name: rc=$rc")
  fi
  return "$rc"
}

# ---- environment -------------------------------------------------------------------------------------------
if [ -z "${CUDA_HOME:-}" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null 2>&1; then
    CUDA_HOME=$(dirname "$(dirname "$(command -v nvcc)")")
  fi
fi
if [ -n "${CUDA_HOME:-}" ]; then
  export CUDA_HOME
  export PATH="$CUDA_HOME/bin:$PATH"
fi
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export FERFAST_BUILD_CUDA=${FERFAST_BUILD_CUDA:-ON}
NPROC=$(nproc 2>/dev/null || echo 8)
export NPROC
export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$NPROC}
export MAX_JOBS=${MAX_JOBS:-$NPROC}

versions() {
  echo "date: $(date -u +%FT%TZ), host: $(hostname), cores: $NPROC, python: $(command -v "$PY")"
  echo "CUDA_HOME=${CUDA_HOME:-unset} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST FERFAST_BUILD_CUDA=$FERFAST_BUILD_CUDA"
  if command -v git >/dev/null 2>&1 && git rev-parse HEAD >/dev/null 2>&1; then
    echo "git: $(git rev-parse --short HEAD), $(git status --short | wc -l) changed/untracked paths"
  fi
  nvidia-smi || echo "nvidia-smi failed"
  "$PY" - <<'PYEOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("torch", "triton", "pytest", "pytest_benchmark", "timm", "numpy", "scikit_build_core", "pybind11"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name}: {type(exc).__name__}: {exc}")
import torch
print("torch CUDA", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PYEOF
  (nvcc --version | tail -n 2) || echo "nvcc not found"
  (cmake --version | head -n 1) || echo "cmake not found"
  echo "ninja $(ninja --version 2>/dev/null || echo 'not found')"
}

build() {
  local log=$LOGS/build.log rc
  local args=(--no-index --no-build-isolation --no-deps -e .)
  echo "pip install ${args[*]}  (log: $log)"
  "$PY" -m pip install "${args[@]}" >"$log" 2>&1
  rc=$?
  if ((rc != 0)) && grep -qi "externally.managed" "$log"; then
    echo "pip refused an externally managed python; retrying with --break-system-packages"
    "$PY" -m pip install --break-system-packages "${args[@]}" >>"$log" 2>&1
    rc=$?
  fi
  if ((rc != 0)) && grep -qi "permission denied" "$log"; then
    echo "site-packages is not writable; retrying with --user"
    "$PY" -m pip install --user "${args[@]}" >>"$log" 2>&1
    rc=$?
  fi
  if ((rc != 0)); then tail -n 150 "$log"; else tail -n 5 "$log"; fi
  return "$rc"
}

# pytest exits 5 when a marker selects no test: report it, do not fail on it.
pytest_allow_empty() {
  "$PY" -m pytest "$@"
  local rc=$?
  if ((rc == 5)); then
    echo "(pytest: no tests selected)"
    return 0
  fi
  return "$rc"
}

report() {
  local files=() f
  # the JSON, else the lines of a run that was cut short
  for f in gpu_masked_patch_mse gpu_ops gpu_ssfer gpu_train_step gpu_loader gpu_compile; do
    if [ -f "$RESULTS/$f.json" ]; then
      files+=("$RESULTS/$f.json")
    elif [ -s "$RESULTS/$f.jsonl" ]; then
      echo "(using $RESULTS/$f.jsonl: that run did not finish)"
      files+=("$RESULTS/$f.jsonl")
    fi
  done
  if ((${#files[@]} == 0)); then
    echo "no benchmark JSON was written"
    return 1
  fi
  local strict=()
  [ "${GPU_CHECK_STRICT:-0}" = 1 ] && strict=(--strict)
  "$PY" benchmarks/report.py "${files[@]}" --merge-out "$RESULTS/gpu.json" --check-target \
    --target-device cuda ${strict[@]+"${strict[@]}"} >"$RESULTS/gpu_report.md"
  local rc=$?
  cat "$RESULTS/gpu_report.md"
  return "$rc"
}

export -f versions build pytest_allow_empty report
BENCH_COMMON=(-q -p no:cacheprovider --gpu-only --benchmark-columns=min,median,iqr,rounds)
# shellcheck disable=SC2206  # BENCH_ARGS is a list of words by design
BENCH_EXTRA=($BENCH_ARGS)
OTHER_BENCHES=(benchmarks/bench_random_masking.py benchmarks/bench_patchify_gather.py
  benchmarks/bench_unshuffle_tokens.py benchmarks/bench_fused_head_masked_mse.py)
# SSFER's ops: the stage-1 step (IoU + mix + targets + loss fwd+bwd; ssfer-eager = the released code's path) and
# the mixing alone (face_mixup: its fraction of copy bandwidth is a target), then fixmatch_loss.
SSFER_BENCHES=(benchmarks/bench_face_mixup.py benchmarks/bench_fixmatch_loss.py)
if [ -n "$BENCH_K" ]; then K_ALL=(-k "$BENCH_K"); K_COMPILE=(-k "($BENCH_K) and compile"); else K_ALL=(); K_COMPILE=(-k compile); fi
if [ -n "$TRAIN_K" ]; then K_TRAIN=(-k "$TRAIN_K"); else K_TRAIN=(); fi

#    name                                 cap  keep-back  command
step "versions"                             45  515  versions
step "build+install"                       240  310  build
step "ferfast.info"                         30  300  "$PY" -m ferfast.info
step "tests (cuda or triton)"              120  290  pytest_allow_empty tests -q --maxfail=25 -p no:cacheprovider \
  -m "cuda or triton" --durations=5
step "tests (the rest)"                     75  245  pytest_allow_empty tests -q --maxfail=5 -p no:cacheprovider \
  -m "not cuda and not triton and not slow" --durations=5
rm -f "$RESULTS"/gpu*.json "$RESULTS"/gpu*.jsonl
# The ferfast and eager numbers first; the torch.compile baselines (slow to compile) last, in their own JSON,
# so that a timeout there loses nothing else (pytest-benchmark writes its JSON only at the end of a run).
step "bench masked_patch_mse"               90  205  "$PY" -m pytest benchmarks/bench_masked_patch_mse.py --no-compile \
  "${BENCH_COMMON[@]}" ${K_ALL[@]+"${K_ALL[@]}"} ${BENCH_EXTRA[@]+"${BENCH_EXTRA[@]}"} \
  --benchmark-json="$RESULTS/gpu_masked_patch_mse.json" --bench-jsonl="$RESULTS/gpu_masked_patch_mse.jsonl"
step "bench other ops"                      90  165  "$PY" -m pytest "${OTHER_BENCHES[@]}" --no-compile \
  "${BENCH_COMMON[@]}" ${K_ALL[@]+"${K_ALL[@]}"} ${BENCH_EXTRA[@]+"${BENCH_EXTRA[@]}"} \
  --benchmark-json="$RESULTS/gpu_ops.json" --bench-jsonl="$RESULTS/gpu_ops.jsonl"
step "bench face-IoU Mixup + FixMatch"      60  135  "$PY" -m pytest "${SSFER_BENCHES[@]}" --no-compile \
  "${BENCH_COMMON[@]}" ${K_ALL[@]+"${K_ALL[@]}"} ${BENCH_EXTRA[@]+"${BENCH_EXTRA[@]}"} \
  --benchmark-json="$RESULTS/gpu_ssfer.json" --bench-jsonl="$RESULTS/gpu_ssfer.jsonl"
# Whole training steps (ViT-B/16, bf16): ferfast ops vs reference ops, 10 timed rounds. No torch.compile provider
# here: it compiles each model's forward and backward (35-50 s for the small demo models on a 2-core CPU) and would
# not fit; `pytest benchmarks/bench_train_step.py` without --no-compile times it. Results also go to the .jsonl as
# each case finishes, so a step cut short still reports what it measured.
step "bench train step (MAE + stage 1)"     70  105  "$PY" -m pytest benchmarks/bench_train_step.py --no-compile \
  "${BENCH_COMMON[@]}" --bench-rounds "$TRAIN_ROUNDS" ${K_TRAIN[@]+"${K_TRAIN[@]}"} \
  ${BENCH_EXTRA[@]+"${BENCH_EXTRA[@]}"} \
  --benchmark-json="$RESULTS/gpu_train_step.json" --bench-jsonl="$RESULTS/gpu_train_step.jsonl"
step "bench torch loader -> GPU"             45   60  "$PY" -m pytest benchmarks/bench_loader.py -k to_gpu \
  -q -p no:cacheprovider --benchmark-columns=min,median,iqr,rounds \
  --benchmark-json="$RESULTS/gpu_loader.json"
step "bench torch.compile(ref) baselines"  200   15  "$PY" -m pytest benchmarks/bench_masked_patch_mse.py \
  "${OTHER_BENCHES[@]}" "${SSFER_BENCHES[@]}" "${BENCH_COMMON[@]}" "${K_COMPILE[@]}" ${BENCH_EXTRA[@]+"${BENCH_EXTRA[@]}"} \
  --benchmark-json="$RESULTS/gpu_compile.json" --bench-jsonl="$RESULTS/gpu_compile.jsonl"
step "report"                               30    0  report

if [ -n "${OUT:-}" ] && [ -d "${OUT:-}" ]; then
  cp -r "$RESULTS"/gpu*.json* "$RESULTS"/gpu_report.md "$LOGS" "$OUT"/ 2>/dev/null
fi

echo
echo "=== gpu_check finished in ${SECONDS}s (budget ${BUDGET_S}s) ==="
if ((${#FAILED[@]})); then
  echo "FAILED steps:"
  printf '  - %s\n' "${FAILED[@]}"
  finish 1
fi
echo "all steps passed"
finish 0
