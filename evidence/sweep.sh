#!/usr/bin/env bash
# The runs behind the README's "Results": PQN (purejaxql's preset; relu, tanh, tanh + HR, param-matched tanh;
# seeds 1-3), then PPO and DQN (tanh, tanh + HR; seeds 1 2), each 1M steps on BreakoutNoFrameskip-v4, at the
# scripts' defaults otherwise. Seed by seed, so that a sweep cut short still compares every variant.
# Runs are written to evidence/runs/; finished ones are skipped and interrupted ones resume from their checkpoints
# (every 100k steps), so running this again resumes it. Stop it with `kill <pid>` (it passes SIGTERM to its runs,
# which write their checkpoints). JOBS and THREADS (default 2 and 1) set how many runs go at once, with how many
# torch threads each; DRY_RUN=1 prints the commands and runs nothing.
# Usage: bash evidence/sweep.sh     then the report: python sweep/plot_results.py --runs-dir evidence/runs --out evidence/report
set -euo pipefail
[[ $# -eq 0 ]] || { echo "usage: bash evidence/sweep.sh (no arguments; JOBS=N, THREADS=N, DRY_RUN=1 in the environment)" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
sweep=(bash "$HERE/../benchmark.sh" --games Breakout --total-timesteps 1000000 --jobs "${JOBS:-2}" --threads "${THREADS:-1}"
       --runs-dir "$HERE/runs" ${DRY_RUN:+--dry-run})
child=""
trap '[[ -z "$child" ]] || kill -TERM "$child" 2>/dev/null; [[ -z "$child" ]] || wait "$child"; exit 143' TERM INT
step() {  # one benchmark.sh sweep, in the background so that the trap above can pass a signal on to it
    "${sweep[@]}" "$@" &
    child=$!
    wait "$child"
    child=""
}
for seed in 1 2 3; do
    step --scripts pqn --variants tanh,tanh_hr,relu,tanh_pm --seeds "$seed" -- --checkpoint-interval 100000 \
        --num-envs 128 --num-steps 32 --update-epochs 2 --num-minibatches 32 --end-e 0.001
done
for seed in 1 2; do
    step --scripts ppo,dqn --variants tanh,tanh_hr --seeds "$seed" -- --checkpoint-interval 100000
done
