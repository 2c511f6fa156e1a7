#!/usr/bin/env bash
# The checks that need a GPU, in one bounded run: the CUDA path of every script (their end-to-end tests run
# on the GPU, since the scripts default to --cuda), then the speed benchmarks on the GPU, then a short PQN
# learning run at the purejaxql preset. Each stage has its own time limit and its log in $OUT.
# Usage: OUT=gpu_results [STAGES="smoke tests pqn ppo dqn learn"] [REFERENCE=path/to/cleanrl/ppo_atari.py]
#        [LEARN_STEPS=1000000] bash benchmarks/bench_gpu.sh
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."  # the repo root: the scripts, tests/ and benchmarks/
OUT="${OUT:-gpu_results}"
PYTHON="${PYTHON:-python3}"
LEARN_STEPS="${LEARN_STEPS:-1000000}"
STAGES="${STAGES:-smoke tests pqn ppo dqn learn}"
mkdir -p "$OUT"

want() { [[ " $STAGES " == *" $1 "* ]]; }

stage() {  # stage NAME SECONDS COMMAND...: run COMMAND under a time limit, log to $OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    echo "=== $name: $* ($(date +%T), limit ${limit}s)"
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.log"
    echo "=== $name: exit $rc ($(date +%T))"
    return $rc
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" -c "import torch, ale_py, gymnasium, tyro; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'ale-py', ale_py.__version__)" || exit 1
echo "cpu cores: $(nproc)"

# Fail fast (and leave the lease for a rerun) if the CUDA path does not even start.
# Each script trains, saves and evaluates its model on the GPU.
want smoke && { stage smoke 150 bash -c "set -e
    $PYTHON pqn_atari_hadamard.py --hadamard --num-envs 8 --num-steps 32 --total-timesteps 512 --metrics-interval 256 \
        --save-model --eval-episodes 1 --run-name gpu_smoke_pqn
    $PYTHON ppo_atari_hadamard.py --hadamard --num-envs 8 --num-steps 32 --total-timesteps 512 --metrics-interval 256 \
        --save-model --eval-episodes 1 --run-name gpu_smoke_ppo
    $PYTHON dqn_atari_hadamard.py --hadamard --total-timesteps 600 --learning-starts 200 --buffer-size 1000 \
        --metrics-interval 200 --save-model --eval-episodes 1 --run-name gpu_smoke_dqn" || exit 1; }

# End-to-end tests on CUDA (video needs moviepy and --track needs wandb, which the GPU image may lack).
want tests && stage tests 240 "$PYTHON" -m pytest -q -n 16 -p no:cacheprovider tests/test_ppo.py tests/test_dqn.py tests/test_pqn.py \
    -k "not round_trip and not tracking"

want pqn && stage pqn_purejaxql 150 "$PYTHON" benchmarks/bench_pqn.py --presets purejaxql --variants tanh tanh_hr --metrics off on --iterations 10
want pqn && stage pqn_compile 120 "$PYTHON" benchmarks/bench_pqn.py --presets purejaxql --variants tanh_hr --metrics off --iterations 10 --compile
want pqn && stage pqn_cleanrl 60 "$PYTHON" benchmarks/bench_pqn.py --presets cleanrl --variants tanh_hr --metrics off --iterations 8
want ppo && stage ppo 120 "$PYTHON" benchmarks/bench_ppo.py --iterations 8 ${REFERENCE:+--reference "$REFERENCE"}
want dqn && stage dqn 120 "$PYTHON" benchmarks/bench_dqn.py --skip-memory --steps 3000 --learning-starts 1000 --buffer-size 100000 --variants tanh,tanh_hr

# A short learning run: PQN + HR at the purejaxql preset on Breakout; prints the return curve from its events.
want learn || exit 0
stage learn 240 "$PYTHON" pqn_atari_hadamard.py --hadamard --num-envs 128 --num-steps 32 --update-epochs 2 \
    --num-minibatches 32 --end-e 0.001 --total-timesteps "$LEARN_STEPS" --run-name gpu_learn
"$PYTHON" - <<'EOF'
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
events = EventAccumulator("runs/gpu_learn", size_guidance={"scalars": 0})
events.Reload()
tags = events.Tags()["scalars"]
returns = events.Scalars("charts/episodic_return") if "charts/episodic_return" in tags else []
sps = events.Scalars("charts/SPS") if "charts/SPS" in tags else []
print(f"{len(returns)} games finished")
for i in range(0, len(returns), max(1, len(returns) // 10)):
    window = returns[i : i + max(1, len(returns) // 10)]
    print(f"steps {window[0].step:>9,}-{window[-1].step:>9,}: mean return {sum(e.value for e in window) / len(window):7.2f} over {len(window)} games")
if sps:
    print(f"SPS at the end: {sps[-1].value:,.0f}")
EOF
