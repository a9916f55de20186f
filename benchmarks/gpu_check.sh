#!/usr/bin/env bash
# ferfast's GPU check: the first contact with a lent GPU machine, about nine minutes, build included
# (one H100/H200; no internet, no venv; system python with torch, triton, timm, pytest, pytest-benchmark, nvcc,
# cmake, ninja, scikit-build-core).
#
#   bash benchmarks/gpu_check.sh              # from anywhere; it runs in the repository root
#   bash benchmarks/gpu_check.sh --dry-run    # (or GPU_CHECK_DRY_RUN=1) print the plan, run nothing; no GPU needed
#
# The steps, in the order of what they verify per minute (name, cap in seconds):
#   preflight         25  versions; imports (torch, triton, timm, pytest, pytest_benchmark), nvcc, cmake, ninja,
#                         the torch and CUDA headers the build needs
#   build            180  editable install from source, FERFAST_BUILD_CUDA=ON, TORCH_CUDA_ARCH_LIST=9.0
#   cuda-loaded       15  `python -m ferfast.info --require cuda --require triton`: fails unless the CUDA kernels
#                         are loaded, a GPU is visible and ferfast.triton imports
#   cuda-op-tests     60  tests/ops -m cuda, the files dealt over CUDA_TEST_JOBS (4) parallel pytest processes,
#                         each file under its own timeout (PER_FILE_S, 45 s; with pytest-timeout installed, also
#                         --timeout per test)
#   train-throughput  80  benchmarks/bench_train_step.py at ViT-B/16 (MAE pretraining B64, stage 1 B32, stage 2 B64),
#                         bf16: ferfast ops vs reference ops vs the SSFER recipe; images/s and model FLOP utilisation
#   train-loop        40  benchmarks/bench_train_loop.py: the same steps fed by their loaders from JPEG files
#                         (ferfast's loader + prefetcher vs SSFER's ImageFolder pipeline), 10 steps a round
#   triton-tests      70  tests/ops -m triton, file by file, MAE ops first, TRITON_TEST_JOBS (4) lanes, each file
#                         under PER_FILE_S; TRITON_CACHE_DIR=.triton_cache/ (git-ignored) so a rerun is warm
#   op-benchmarks     50  the fused ops' benchmarks (ViT-B/16 shapes, CUDA providers, no torch.compile): bandwidth
#                         as a fraction of the copy bandwidth measured in the same run
#   leftovers         10  whatever time is left: the compile tests and the convergence tests (cuda or triton)
#   report            10  benchmarks/report.py --check-target --strict on the JSON written above, the targets this
#                         run measures (GPU_CHECK_TARGETS): masked_patch_mse >= 0.8 and face_mixup >= 0.5 x copy
#                         bandwidth, the stage-1 ops >= 4x ssfer-eager, the MAE step >= 2x and the stage-1 step
#                         >= 5x the SSFER recipe's images/s
# The caps sum to 540 s (GPU_CHECK_BUDGET_S, default 540): each step runs under min(its cap, the budget left
# after the report's reserve); a step that cannot start is reported as skipped. The CPU tests are not run here:
# CI runs them.
#
# Summary: $OUT/gpu_check_summary.{md,json} (without $OUT: benchmarks/results/), one entry per step with its
# status: passed / failed / timed out / skipped (with the reason; a skipped step is never counted as passed).
# Logs and JSON go to benchmarks/results/ and are copied to $OUT. Exit status: 0 only when every step passed
# (a dry run exits 0 with every step "skipped: dry run").
#
# Knobs: PYTHON (python3), GPU_CHECK_BUDGET_S, GPU_CHECK_DRY_RUN, TORCH_CUDA_ARCH_LIST (9.0), CUDA_HOME,
# PER_FILE_S, PER_TEST_S (30, with pytest-timeout), CUDA_TEST_JOBS, TRITON_TEST_JOBS, TRAIN_ROUNDS (10),
# BENCH_ROUNDS (10), BENCH_K (pytest -k of the op benchmarks, default B64), TRAIN_K (of the training steps, default
# "base and not B128"), GPU_CHECK_TARGETS (report.py --targets).
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
DRY_RUN=${GPU_CHECK_DRY_RUN:-0}
for arg in "$@"; do
  case $arg in
    --dry-run) DRY_RUN=1 ;;
    -h|--help) sed -n '2,40p' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument '$arg' (use --dry-run or --help)" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
BUDGET_S=${GPU_CHECK_BUDGET_S:-540}
REPORT_RESERVE_S=10
PER_FILE_S=${PER_FILE_S:-45}
PER_TEST_S=${PER_TEST_S:-30}
CUDA_TEST_JOBS=${CUDA_TEST_JOBS:-4}
TRITON_TEST_JOBS=${TRITON_TEST_JOBS:-4}
TRAIN_ROUNDS=${TRAIN_ROUNDS:-10}
BENCH_K=${BENCH_K-B64}
TRAIN_K=${TRAIN_K-base and not B128}
BENCH_ROUNDS=${BENCH_ROUNDS:-10}
#: the targets this run measures (the torch.compile baselines are not run here: compiling does not fit)
TARGETS=${GPU_CHECK_TARGETS:-masked_patch_mse,face_mixup,stage1_vs_ssfer,train_pretrain_vs_ssfer,train_stage1_vs_ssfer}
RESULTS=benchmarks/results
LOGS=$RESULTS/gpu_logs
SUMMARY_DIR=$RESULTS
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT" && SUMMARY_DIR=$OUT
fi
mkdir -p "$RESULTS" "$LOGS" "$SUMMARY_DIR"
STEPS_TSV=$(mktemp "${TMPDIR:-/tmp}/gpu_check_steps.XXXXXX")
export PY RESULTS LOGS PER_FILE_S PER_TEST_S TARGETS
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 PYTHONUNBUFFERED=1
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/.triton_cache}
mkdir -p "$TRITON_CACHE_DIR"

TEE_PID=
if [ -n "${OUT:-}" ]; then
  exec > >(tee "$OUT/gpu_check.log") 2>&1
  TEE_PID=$!
fi

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

# ---- the steps' commands (exported: `timeout` runs them through bash -c) -----------------------------------

preflight() {
  local rc=0
  echo "date: $(date -u +%FT%TZ), host: $(hostname), cores: $NPROC, python: $(command -v "$PY")"
  echo "CUDA_HOME=${CUDA_HOME:-unset} TORCH_CUDA_ARCH_LIST=$TORCH_CUDA_ARCH_LIST FERFAST_BUILD_CUDA=$FERFAST_BUILD_CUDA"
  echo "TRITON_CACHE_DIR=$TRITON_CACHE_DIR ($(find "$TRITON_CACHE_DIR" -type f 2>/dev/null | wc -l) files: warm if > 0)"
  if command -v git >/dev/null 2>&1 && git rev-parse HEAD >/dev/null 2>&1; then
    echo "git: $(git rev-parse --short HEAD), $(git status --short | wc -l) changed/untracked paths"
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || { echo "nvidia-smi failed"; rc=1; }
  "$PY" - <<'PYEOF' || rc=1
import importlib, importlib.util, os, sys
from pathlib import Path
print("python", sys.version.split()[0])
bad = []
for name in ("torch", "triton", "timm", "pytest", "pytest_benchmark", "numpy", "scikit_build_core"):
    try:
        print(f"{name} {importlib.import_module(name).__version__}")
    except Exception as exc:  # noqa: BLE001
        print(f"{name}: MISSING ({type(exc).__name__}: {exc})")
        bad.append(name)
for name in ("pytest_timeout", "xdist", "nvidia.dali"):
    print(f"{name}: {'present' if importlib.util.find_spec(name.split('.')[0]) else 'absent (optional)'}")
import torch
print("torch CUDA", torch.version.cuda, "available", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
if not torch.cuda.is_available():
    bad.append("a CUDA GPU")
headers = [Path(torch.__file__).parent / "include" / "torch" / "extension.h"]
cuda_home = os.environ.get("CUDA_HOME")
headers += [Path(cuda_home or "/nonexistent") / "include" / h for h in ("cuda_runtime.h", "crt/host_config.h")]
for header in headers:
    print(f"header {header}: {'ok' if header.is_file() else 'MISSING'}")
    if not header.is_file():
        bad.append(str(header))
if bad:
    sys.exit(f"preflight: missing {', '.join(bad)}")
PYEOF
  (nvcc --version | tail -n 2) || { echo "nvcc not found"; rc=1; }
  (cmake --version | head -n 1) || { echo "cmake not found"; rc=1; }
  echo "ninja $(ninja --version 2>/dev/null || echo 'not found')"
  return "$rc"
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

# test_files LABEL JOBS MARK FILE...: deals the files over JOBS parallel lanes (in order: file i goes to lane
# i mod JOBS, so the first files start first); each file runs `pytest FILE -m MARK` under `timeout PER_FILE_S`
# (and --timeout PER_TEST_S per test where pytest-timeout is installed). Fails when any file failed or timed out.
test_files() {
  local label=$1 jobs=$2 mark=$3
  shift 3
  local files=("$@") dir=$LOGS/$label lane pids=() per_test=() failed=0
  mkdir -p "$dir"
  : >"$dir/results.tsv"
  if "$PY" -c "import pytest_timeout" 2>/dev/null; then per_test=(-p pytest_timeout --timeout "$PER_TEST_S"); fi
  for ((lane = 0; lane < jobs; lane++)); do
    (
      local i f name rc status
      for ((i = lane; i < ${#files[@]}; i += jobs)); do
        f=${files[$i]}
        name=$(basename "$f" .py)
        timeout --kill-after=5 "$PER_FILE_S" "$PY" -m pytest "$f" -m "$mark" -q -p no:cacheprovider \
          ${per_test[@]+"${per_test[@]}"} >"$dir/$name.log" 2>&1
        rc=$?
        case $rc in
          0) status=passed ;;
          5) status="no tests selected" ;;
          124|137) status="timed out after ${PER_FILE_S}s" ;;
          *) status="failed (rc=$rc)" ;;
        esac
        printf '%s\t%s\t%s\n' "$f" "$status" "$(tail -n 1 "$dir/$name.log")" >>"$dir/results.tsv"
      done
    ) &
    pids+=($!)
  done
  wait "${pids[@]}"
  echo "per file ($label, -m $mark; logs in $dir):"
  while IFS=$'\t' read -r f status last; do
    printf '  %-45s %-26s %s\n' "$f" "$status" "$last"
    case $status in passed|"no tests selected") ;; *) failed=1 ;; esac
  done <"$dir/results.tsv"
  local listed
  listed=$(wc -l <"$dir/results.tsv")
  if ((listed < ${#files[@]})); then
    echo "  only $listed of ${#files[@]} files reported"
    failed=1
  fi
  for f in "${files[@]}"; do  # the tail of each failing or timed-out file's log
    if awk -F'\t' -v f="$f" '$1 == f && $2 != "passed" && $2 != "no tests selected" {found = 1} END {exit !found}' \
      "$dir/results.tsv"; then
      echo "--- $f"
      tail -n 30 "$dir/$(basename "$f" .py).log"
    fi
  done
  return "$failed"
}

# pytest that treats "no tests selected" (exit 5) as success.
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
  for f in gpu_train_step gpu_train_loop gpu_ops; do  # the JSON, else the lines of a run that was cut short
    if [ -f "$RESULTS/$f.json" ]; then
      files+=("$RESULTS/$f.json")
    elif [ -s "$RESULTS/$f.jsonl" ]; then
      echo "(using $RESULTS/$f.jsonl: that run did not finish)"
      files+=("$RESULTS/$f.jsonl")
    fi
  done
  if ((${#files[@]} == 0)); then
    echo "no benchmark JSON was written: no target can be checked"
    return 1
  fi
  "$PY" benchmarks/report.py "${files[@]}" --merge-out "$RESULTS/gpu.json" --check-target --target-device cuda \
    --targets "$TARGETS" --strict >"$RESULTS/gpu_report.md"
  local rc=$?
  cat "$RESULTS/gpu_report.md"
  return "$rc"
}

export -f preflight build test_files pytest_allow_empty report

# ---- the step runner ---------------------------------------------------------------------------------------

BUILD_OK=1
# record NAME CAP LIMIT STATUS RC SECONDS REASON COMMAND
record() {
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >>"$STEPS_TSV"
}

# step NAME CAP NEEDS_BUILD CMD...: runs CMD under min(CAP, budget left - report reserve) and records its status.
step() {
  local name=$1 cap=$2 needs_build=$3
  shift 3
  local command reserve=$REPORT_RESERVE_S
  command=$(printf '%q ' "$@")
  command=${command% }
  [ "$name" = report ] && reserve=0
  local left=$((BUDGET_S - SECONDS - reserve))
  local limit=$((cap < left ? cap : left))
  ((limit < 0)) && limit=0
  echo
  if ((DRY_RUN)); then
    printf '=== [%s] cap %ss: %s\n' "$name" "$cap" "$command"
    record "$name" "$cap" "$cap" skipped "" 0 "dry run" "$command"
    return 0
  fi
  echo "=== [$name] start at t=${SECONDS}s, limit ${limit}s (cap ${cap}s) ==="
  if ((needs_build)) && ((!BUILD_OK)); then
    echo "--- [$name] SKIPPED: the build failed"
    record "$name" "$cap" 0 skipped "" 0 "the build failed" "$command"
    return 0
  fi
  if ((limit < 5)); then
    echo "--- [$name] SKIPPED: out of time (budget ${BUDGET_S}s)"
    record "$name" "$cap" "$limit" skipped "" 0 "out of time" "$command"
    return 0
  fi
  local t0=$SECONDS rc status reason=""
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@"
  rc=$?
  if ((rc == 124 || rc == 137)); then
    status="timed out"
    reason="killed after ${limit}s"
  elif ((rc != 0)); then
    status=failed
    reason="exit status $rc"
  else
    status=passed
  fi
  echo "--- [$name] $status (rc=$rc), $((SECONDS - t0))s (t=${SECONDS}s)"
  record "$name" "$cap" "$limit" "$status" "$rc" "$((SECONDS - t0))" "$reason" "$command"
  [ "$name" = build ] && [ "$status" != passed ] && BUILD_OK=0
  return 0
}

# ---- the plan ----------------------------------------------------------------------------------------------

# MAE ops first (pretraining is the headline), then SSFER's stage-1/2 ops, then the rest of tests/ops.
FIRST_FILES=(masked_patch_mse patchify_gather random_masking unshuffle_tokens fused_head_masked_mse face_mixup
  facemix_loss mixup_soft_targets box_iou face_iou_mixup fixmatch_loss registration)
OP_TEST_FILES=()
for f in "${FIRST_FILES[@]}"; do
  [ -f "tests/ops/test_$f.py" ] && OP_TEST_FILES+=("tests/ops/test_$f.py")
done
for f in tests/ops/test_*.py; do  # the compile tests are a leftover step of their own
  case " ${OP_TEST_FILES[*]} " in *" $f "*) continue ;; esac
  [ "$f" = tests/ops/test_compile.py ] || OP_TEST_FILES+=("$f")
done
BENCH_COMMON=(-q -p no:cacheprovider --gpu-only --no-compile --bench-warmup 1
  --benchmark-columns=min,median,iqr,rounds)
if [ -n "$BENCH_K" ]; then K_OPS=(-k "$BENCH_K"); else K_OPS=(); fi
if [ -n "$TRAIN_K" ]; then K_TRAIN=(-k "$TRAIN_K"); else K_TRAIN=(); fi
# the benchmarks with a target first (a timeout loses the rest only: results also go to the .jsonl as they finish)
OP_BENCHES=(benchmarks/bench_masked_patch_mse.py benchmarks/bench_face_mixup.py benchmarks/bench_patchify_gather.py
  benchmarks/bench_random_masking.py benchmarks/bench_unshuffle_tokens.py benchmarks/bench_fused_head_masked_mse.py
  benchmarks/bench_fixmatch_loss.py)

((DRY_RUN)) || rm -f "$RESULTS"/gpu*.json "$RESULTS"/gpu*.jsonl
echo "gpu_check: budget ${BUDGET_S}s, TRITON_CACHE_DIR=$TRITON_CACHE_DIR$( ((DRY_RUN)) && echo ', DRY RUN: nothing is executed')"

#    name               cap  build  command
step preflight           25  0  preflight
step build              180  0  build
step cuda-loaded         15  1  "$PY" -m ferfast.info --require cuda --require triton
step cuda-op-tests       60  1  test_files cuda "$CUDA_TEST_JOBS" cuda "${OP_TEST_FILES[@]}"
step train-throughput    80  1  "$PY" -m pytest benchmarks/bench_train_step.py "${BENCH_COMMON[@]}" \
  --bench-rounds "$TRAIN_ROUNDS" ${K_TRAIN[@]+"${K_TRAIN[@]}"} \
  --benchmark-json="$RESULTS/gpu_train_step.json" --bench-jsonl="$RESULTS/gpu_train_step.jsonl"
step train-loop          40  1  "$PY" -m pytest benchmarks/bench_train_loop.py -q -p no:cacheprovider --gpu-only \
  --bench-rounds 1 --benchmark-columns=min,median,rounds --benchmark-json="$RESULTS/gpu_train_loop.json"
step triton-tests        70  1  test_files triton "$TRITON_TEST_JOBS" triton "${OP_TEST_FILES[@]}"
step op-benchmarks       50  1  "$PY" -m pytest "${OP_BENCHES[@]}" "${BENCH_COMMON[@]}" --bench-rounds "$BENCH_ROUNDS" \
  ${K_OPS[@]+"${K_OPS[@]}"} \
  --benchmark-json="$RESULTS/gpu_ops.json" --bench-jsonl="$RESULTS/gpu_ops.jsonl"
step leftovers           10  1  pytest_allow_empty tests/ops/test_compile.py tests/convergence -q -x \
  -p no:cacheprovider -m "cuda or triton"
step report              10  1  report

# ---- the summary -------------------------------------------------------------------------------------------

SUMMARY_RC=0
"$PY" - "$STEPS_TSV" "$SUMMARY_DIR" "$BUDGET_S" "$SECONDS" "$DRY_RUN" <<'PYEOF' || SUMMARY_RC=$?
import json, sys
from datetime import datetime, timezone
from pathlib import Path

tsv, out, budget, elapsed, dry = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5] == "1"
fields = ("name", "cap_s", "limit_s", "status", "rc", "seconds", "reason", "command")
steps = []
for line in Path(tsv).read_text().splitlines():
    step = dict(zip(fields, line.split("\t")))
    for key in ("cap_s", "limit_s", "seconds"):
        step[key] = int(step[key])
    step["rc"] = int(step["rc"]) if step["rc"] else None
    steps.append(step)
counts = {s: sum(step["status"] == s for step in steps) for s in ("passed", "failed", "timed out", "skipped")}
if dry:
    verdict = "dry run"
elif counts["failed"] or counts["timed out"]:
    verdict = "failed"
elif counts["skipped"]:
    verdict = "incomplete"
else:
    verdict = "passed"
doc = {
    "script": "benchmarks/gpu_check.sh",
    "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "dry_run": dry,
    "budget_s": budget,
    "caps_total_s": sum(step["cap_s"] for step in steps),
    "elapsed_s": elapsed,
    "verdict": verdict,
    "counts": counts,
    "steps": steps,
}
(out / "gpu_check_summary.json").write_text(json.dumps(doc, indent=1) + "\n")
lines = [
    f"# gpu_check summary: {verdict.upper()}",
    "",
    f"{doc['date']}, {elapsed} s of a {budget} s budget (caps total {doc['caps_total_s']} s)"
    + (", dry run: nothing was executed" if dry else ""),
    "",
    "| # | step | status | time s | limit s | cap s | note |",
    "|---|---|---|---|---|---|---|",
]
for i, step in enumerate(steps, 1):
    status = step["status"] + (f": {step['reason']}" if step["status"] == "skipped" else "")
    note = step["reason"] if step["status"] != "skipped" else ""
    lines.append(f"| {i} | {step['name']} | {status} | {step['seconds']} | {step['limit_s']} | {step['cap_s']} | {note} |")
lines += ["", ", ".join(f"{n} {k}" for k, n in counts.items()), ""]
(out / "gpu_check_summary.md").write_text("\n".join(lines))
print("\n".join(lines))
PYEOF
if ((SUMMARY_RC)); then
  echo "writing the summary failed (rc=$SUMMARY_RC); the steps were:"
  cat "$STEPS_TSV"
fi

if ((!DRY_RUN)) && [ -n "${OUT:-}" ]; then
  cp -r "$RESULTS"/gpu*.json* "$RESULTS"/gpu_report.md "$LOGS" "$OUT"/ 2>/dev/null
fi

FINAL_RC=0
if ((!DRY_RUN)); then
  NOT_PASSED=$(awk -F'\t' '$4 != "passed"' "$STEPS_TSV" | wc -l)
  ((NOT_PASSED == 0 && SUMMARY_RC == 0)) || FINAL_RC=1
fi
rm -f "$STEPS_TSV"
echo "=== gpu_check finished in ${SECONDS}s (budget ${BUDGET_S}s): exit $FINAL_RC ==="
if [ -n "$TEE_PID" ]; then
  exec >&- 2>&-
  wait "$TEE_PID" 2>/dev/null || true
fi
exit "$FINAL_RC"
