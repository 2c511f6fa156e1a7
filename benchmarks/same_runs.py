"""Does this checkout train the runs that a git revision trained? Each training script, at REV and in this checkout,
trains the same short run (seed 1, CPU, one torch thread, tanh and tanh + HR, the probe on), and every TensorBoard scalar
the two log is compared step by step: losses, returns, epsilon, the learning rate and every representation metric must be
equal to the bit. Wall-clock tags (charts/SPS) are left out; a step logged on one side only (a probe added, say) is
listed, not counted as a difference. One line per run; exit 1 when a value differs or a tag is missing on one side.

Usage: python benchmarks/same_runs.py REV [--scripts ppo,dqn,pqn]      e.g. python benchmarks/same_runs.py fa8eb58
(the revision that made the committed evidence runs: see the README's "Results")
"""

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# a short run of each script that trains (past DQN's learning starts) and probes at least twice
FLAGS = {
    "ppo": "--total-timesteps 2048 --metrics-interval 1024",
    "dqn": "--total-timesteps 2000 --learning-starts 1000 --buffer-size 2000 --metrics-interval 500 --metrics-batch-size 256",
    "pqn": "--total-timesteps 2048 --metrics-interval 1024",
}
VARIANTS = {"tanh": [], "tanh_hr": ["--hadamard"]}
WALL_CLOCK = {"charts/SPS"}


def scalars(run_dir: Path) -> dict:
    """{tag: {step: [values, in the order logged]}} of every scalar in the run's TensorBoard event files (several games
    can end at one step)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    logged = {}
    for tag in events.Tags()["scalars"]:
        for event in events.Scalars(tag):
            logged.setdefault(tag, {}).setdefault(event.step, []).append(event.value)
    return logged


def train(root: Path, algo: str, flags: list, cwd: Path, name: str) -> dict:
    command = [sys.executable, str(root / f"{algo}_atari_hadamard.py"), "--no-cuda", "--seed", "1", "--run-name", name, *flags]
    result = subprocess.run(command, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"error: {' '.join(command)} failed in {cwd}:\n{result.stderr[-2000:]}")
    return scalars(cwd / "runs" / name)


def compare(rev: dict, tree: dict) -> tuple[int, list, list]:
    """How many values both runs logged, the differences (a tag on one side only, or a value that differs at a step both
    logged) and the steps one side logged alone."""
    compared, differences, alone = 0, [], {}
    for tag in sorted((set(rev) | set(tree)) - WALL_CLOCK):
        if tag not in rev or tag not in tree:
            differences.append(f"{tag} only {'in the working tree' if tag in tree else 'at REV'}")
            continue
        for step in sorted(set(rev[tag]) & set(tree[tag])):
            compared += len(tree[tag][step])
            if rev[tag][step] != tree[tag][step]:
                differences.append(f"{tag} at step {step}: {rev[tag][step]!r} at REV, {tree[tag][step]!r} now")
        for side, own, other in (("REV", rev, tree), ("working tree", tree, rev)):
            if set(own[tag]) - set(other[tag]):
                alone.setdefault((side, tuple(sorted(set(own[tag]) - set(other[tag])))), []).append(tag)
    lines = [
        f"steps {list(steps)} only in the {side}'s run, of {len(tags)} tags ({tags[0]}, ...)"
        for (side, steps), tags in alone.items()
    ]
    return compared, differences, lines


def main():
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("rev", help="a git revision of this repository")
    parser.add_argument("--scripts", default="ppo,dqn,pqn", help="comma-separated, of ppo, dqn, pqn (default: all three)")
    args = parser.parse_args()
    algos = args.scripts.split(",")
    if not set(algos) <= set(FLAGS):
        sys.exit(f"error: --scripts takes ppo, dqn, pqn; got {args.scripts!r}")
    verify = ["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet", f"{args.rev}^{{commit}}"]
    if subprocess.run(verify, capture_output=True).returncode != 0:
        sys.exit(f"error: {args.rev!r} is not a revision of {ROOT}")
    failed = False
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "--quiet", "--detach", str(work / "rev"), args.rev], check=True
        )
        try:
            for algo in algos:
                for variant, variant_flags in VARIANTS.items():
                    flags = [*FLAGS[algo].split(), *variant_flags]
                    runs = {side: train(root, algo, flags, work, f"{algo}-{variant}-{side}") for side, root in
                            (("rev", work / "rev"), ("tree", ROOT))}  # fmt: skip
                    values, differences, alone = compare(runs["rev"], runs["tree"])
                    verdict = "DIFFERENT" if differences else "the same"
                    print(f"{algo} {variant} ({' '.join(flags)}): {verdict}, {values} values compared", flush=True)
                    for line in differences[:10] + alone:
                        print(f"    {line}", flush=True)
                    failed |= bool(differences)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "rev")], capture_output=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
