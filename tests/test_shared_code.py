"""Each training script stands alone, with its own copy of what the three share: the run's setup, the environment, the
network's building blocks, model files, checkpoints and interrupts, and the run's lifecycle in `__main__`. These tests hold
the copies equal, so that `diff ppo_atari_hadamard.py pqn_atari_hadamard.py` shows the algorithms and little else.

A script is cut into blocks: a section runs from its banner (`# ----...---- <name>`, at the top level or inside
`__main__`) to the next banner; a definition (`def`, `class` or a constant) is its statement. What follows an
`# ALGO LOGIC:` line in a block is the algorithm's own and is not compared (check_args' checks of the algorithm's flags)."""

import ast
import difflib
import re

import pytest

from conftest import ROOT

SCRIPTS = ("ppo_atari_hadamard.py", "pqn_atari_hadamard.py", "dqn_atari_hadamard.py")
BANNER = re.compile(r"^ *# -{77} (.+)$", re.M)

# the shared blocks: {name: (the scripts that have it, a regex of the lines that are the algorithm's own)}
SHARED = {
    # sections: parse_args, check_args (the shared checks), the env ids, vector and evaluation envs, episode bookkeeping,
    # FIRE after a life loss; the whole checkpoint and interrupt machinery
    "run setup": (SCRIPTS, None),
    "environment": (SCRIPTS, None),
    "checkpoints and interrupts": (SCRIPTS, None),
    # the lifecycle in __main__: flags, run folder, resume check, seeding, envs; the outputs (run folder taken, config.json,
    # W&B, TensorBoard); the evaluation after training, done.json and the cleanup
    "the run: flags, folder, seeding, envs": (SCRIPTS, None),
    "outputs (nothing is written before)": (SCRIPTS, None),
    "evaluation and the end of the run": (SCRIPTS, None),
    # the network's building blocks (DQN keeps PyTorch's default initialisation, as CleanRL's DQN: no layer_init)
    "layer_init": (SCRIPTS[:2], None),
    "ACTIVATIONS": (SCRIPTS, None),
    "Hadamard": (SCRIPTS, None),
    "num_parameters": (SCRIPTS, None),
    # the flags that hints name, as a command line gives them
    "as_flag": (SCRIPTS, None),
    # model files: loading them, and the network they describe (its constructor is the algorithm's)
    "load_model": (SCRIPTS, None),
    "build_network": (SCRIPTS, r"(?s)    network = (Agent|QNetwork)\(.*?\)\n(?=    try:)"),
}


def block(script: str, name: str, algorithm_lines: str = None) -> str:
    """The block `name` of `script` (a banner's section or a top-level definition), without its `# ALGO LOGIC:` tail and the
    lines `algorithm_lines` matches; PPO's network `agent` (CleanRL's name) reads `q_network`, as the other two call it."""
    source = (ROOT / script).read_text()
    banners = {m.group(1): m for m in BANNER.finditer(source)}
    if name in banners:
        start = banners[name].start()
        main = source.find("\nif __name__ ==", start)  # the last top-level section ends where __main__ begins
        ends = [m.start() for m in BANNER.finditer(source, banners[name].end())] + [main if main >= 0 else len(source)]
        text = source[start : min(ends)]
    else:
        names = {
            target: node
            for node in ast.parse(source).body
            for target in [getattr(node, "name", None)] + [getattr(t, "id", None) for t in getattr(node, "targets", [])]
        }
        if name not in names:
            pytest.fail(f"{script} has no section or definition {name!r}")
        text = "".join(source.splitlines(keepends=True)[names[name].lineno - 1 : names[name].end_lineno])
    text = re.split(r"^ *# ALGO LOGIC:.*\n", text, maxsplit=1, flags=re.M)[0]
    if algorithm_lines:
        text = re.sub(algorithm_lines, "", text)
    return re.sub(r"\bagent\b", "q_network", text)


@pytest.mark.parametrize("name", SHARED)
def test_the_shared_blocks_are_the_same_in_every_script(name):
    scripts, algorithm_lines = SHARED[name]
    texts = {script: block(script, name, algorithm_lines) for script in scripts}
    first = scripts[0]
    for script in scripts[1:]:
        if texts[script] != texts[first]:
            diff = difflib.unified_diff(
                texts[first].splitlines(keepends=True), texts[script].splitlines(keepends=True), first, script
            )
            pytest.fail(f"{name!r} differs between {first} and {script}:\n{''.join(diff)}")


def test_every_script_has_the_same_sections_in_the_same_order():
    """The same banners in the same order, top level and in `__main__` (DQN's replay buffer is its own)."""
    sections = {
        script: [name for name in BANNER.findall((ROOT / script).read_text()) if name != "replay buffer"] for script in SCRIPTS
    }
    assert sections[SCRIPTS[1]] == sections[SCRIPTS[0]] and sections[SCRIPTS[2]] == sections[SCRIPTS[0]], sections
