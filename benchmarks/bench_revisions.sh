#!/usr/bin/env bash
# Did a change slow the training loops? The steps per second of the three scripts at a git revision and in the working
# tree, measured in one run, alternating (REV, then the working tree, REPEATS times), with their medians and ratio.
# Each measurement is a short real run of the default network with HR (`--hadamard`), the probe off: its done.json
# SPS (steps over wall time, start-up included, the same on both sides). Run it with nothing else running.
# Usage: bash benchmarks/bench_revisions.sh REV [REPEATS]     e.g. bash benchmarks/bench_revisions.sh HEAD~3 3
set -euo pipefail
[[ $# -ge 1 && $# -le 2 ]] || { echo "usage: bash benchmarks/bench_revisions.sh REV [REPEATS (default 3)]" >&2; exit 2; }
rev="$1" repeats="${2:-3}"
[[ "$repeats" =~ ^[1-9][0-9]*$ ]] || { echo "error: REPEATS must be a positive integer, got '$repeats'" >&2; exit 2; }
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python}"
git -C "$here" rev-parse --verify --quiet "$rev^{commit}" >/dev/null || { echo "error: '$rev' is not a revision of $here" >&2; exit 2; }
work="$(mktemp -d)"
trap 'git -C "$here" worktree remove --force "$work/rev" >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
git -C "$here" worktree add --quiet --detach "$work/rev" "$rev"

declare -A flags=(  # a few seconds of steady training each, past DQN's learning starts
    [ppo]="--total-timesteps 8192"
    [pqn]="--total-timesteps 8192"
    [dqn]="--total-timesteps 3000 --learning-starts 1000 --buffer-size 3000"
)
echo "| script | $rev SPS (median) | working tree SPS (median) | working tree / $rev |"
echo "| --- | --- | --- | --- |"
for algo in ppo dqn pqn; do
    declare -A sps=([rev]="" [tree]="")
    for i in $(seq "$repeats"); do
        for side in rev tree; do
            root="$here"
            [[ $side == tree ]] || root="$work/rev"
            name="$algo-$side-$i"
            # shellcheck disable=SC2086
            (cd "$work" && "$python" "$root/${algo}_atari_hadamard.py" --hadamard --metrics-interval 0 ${flags[$algo]} \
                --run-name "$name" >"$work/$name.log" 2>&1) || { echo "error: $algo at $side failed: $work/$name.log" >&2; tail -5 "$work/$name.log" >&2; exit 1; }
            sps[$side]+=" $("$python" -c 'import json, sys; print(json.load(open(sys.argv[1]))["SPS"])' "$work/runs/$name/done.json")"
        done
    done
    "$python" - "$algo" "${sps[rev]}" "${sps[tree]}" <<'EOF'
import statistics, sys
algo, rev, tree = sys.argv[1], [float(x) for x in sys.argv[2].split()], [float(x) for x in sys.argv[3].split()]
a, b = statistics.median(rev), statistics.median(tree)
print(f"| {algo} | {a:.0f} ({', '.join(f'{x:.0f}' for x in rev)}) | {b:.0f} ({', '.join(f'{x:.0f}' for x in tree)}) | {b / a:.2f} |")
EOF
done
