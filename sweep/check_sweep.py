"""The checks benchmark.sh makes before a sweep starts, run with the sweep's own python (PYTHON), so that a sweep that
would go wrong stops with one line (on stderr, exit 2) before anything is run or written.

  python sweep/check_sweep.py games NAME...
      Each game's env id, one a line. A short name is matched to ale-py's ROMs whatever its case (pong, ms_pacman or
      mspacman -> PongNoFrameskip-v4, MsPacmanNoFrameskip-v4); an env id must be one the scripts take
      (<Game>NoFrameskip-v4, ALE/<Game>-v5 or <Game>-v5). Either way the game is written as ale-py names it, so that
      one game has one run name.

  python sweep/check_sweep.py runs RUNS_DIR [skip|redo]  < records
      stdin holds NUL-terminated fields, record after record:
        flags LABEL SCRIPT N FLAG...       N flags given to SCRIPT; LABEL says where they come from (e.g. PPO_ARGS)
        task NAME SCRIPT LOCKED N ARG...   a run of the sweep: its name, its script, 1 when another sweep runs it now,
                                           and the N flags its command gives the script
      Each script is imported once (its Args, RESUME_MAY_CHANGE and COMPUTED; not its training, which is guarded by
      `if __name__ == "__main__"`) and each flag list is parsed with tyro as the script parses it: a flag the script
      does not take is one line naming it. A run folder that holds a config.json (a finished or an interrupted run)
      must hold the settings its task would run with: every Args field but those that may change on resume, those the
      script computes and the run name; a field missing from an older config.json counts as equal when the task's
      value is the field's default. Other settings are an error unless the sweep says what to do with them (skip or
      redo): then each such run is one line on stdout, `<task index, from 0><TAB><its differences>`.
"""

import contextlib
import dataclasses
import difflib
import importlib.util
import io
import json
import os
import re
import sys
import warnings

sys.dont_write_bytecode = True  # a check writes nothing, not even __pycache__ beside the scripts
os.environ["COLUMNS"] = "1000"  # tyro's messages on one line each, to be read back below
# what PPO and PQN compute from the other fields (their rollout sizes), for a copy that does not list them in COMPUTED
ROLLOUT_COMPUTED = {"batch_size", "minibatch_size", "num_iterations"}
MAX_SHOWN = 3  # differences shown per run
SWEPT = {"--env-id", "--seed", "--run-name"}  # flags whose values differ from run to run of a sweep


def fail(message: str):
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def flag(field: str) -> str:
    return "--" + field.replace("_", "-")


# ----------------------------------------------------------------------------------------------------------------- games
ENV_ID = re.compile(r"(ALE/)?([A-Za-z0-9]+?)(NoFrameskip)?-v([0-9]+)")
ENV_ID_FORMS = {(False, True, "4"), (True, False, "5"), (False, False, "5")}  # NoFrameskip-v4, ALE/...-v5, ...-v5


def env_ids(games: list) -> list:
    try:
        from ale_py.roms import get_all_rom_ids
    except ImportError as exc:
        fail(f"{sys.executable} cannot import ale_py ({exc}): activate the project's virtual environment or set PYTHON")
    roms = {rom.replace("_", ""): rom for rom in get_all_rom_ids()}
    names = {key: rom.title().replace("_", "") for key, rom in roms.items()}  # ale-py's own names: ms_pacman -> MsPacman
    ids = []
    for game in games:
        short = re.fullmatch(r"[A-Za-z0-9_]+", game) is not None
        match = None if short else ENV_ID.fullmatch(game)
        if not short and match is None:
            fail(
                f"'{game}' is neither a game nor an env id the scripts take (e.g. Breakout, BreakoutNoFrameskip-v4, "
                "ALE/Breakout-v5 or Breakout-v5)"
            )
        asked = game if short else match.group(2)
        key = asked.replace("_", "").lower()
        if key not in roms:
            close = difflib.get_close_matches(key, names, 3, 0.5)
            hint = f"; did you mean {', '.join(names[c] for c in close)}?" if close else ""
            fail(f"unknown game '{asked}' (not an ale-py ROM){hint}")
        name = names[key]
        if short:
            env_id = f"{name}NoFrameskip-v4"
        elif (bool(match.group(1)), bool(match.group(3)), match.group(4)) in ENV_ID_FORMS:
            env_id = f"{match.group(1) or ''}{name}{match.group(3) or ''}-v{match.group(4)}"
        else:
            fail(f"env id '{game}' is not one the scripts take: use {name}NoFrameskip-v4, ALE/{name}-v5 or {name}-v5")
        if env_id not in ids:  # pong and Pong are one game
            ids.append(env_id)
    return ids


# ------------------------------------------------------------------------------------------------------------------ runs
def load_script(path: str, index: int):
    """The script as a module, imported as `python <script>` would run it but for its `__main__` block."""
    sys.path.insert(0, os.path.dirname(os.path.abspath(path)))  # its own imports (common_metrics) beside it
    name = f"sweep_script_{index}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            warnings.simplefilter("ignore")
            spec.loader.exec_module(module)
    except Exception as exc:
        fail(
            f"{sys.executable} cannot import {path} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}): "
            "activate the project's virtual environment or set PYTHON"
        )
    if not dataclasses.is_dataclass(getattr(module, "Args", None)):
        fail(f"{path} has no Args dataclass, so the sweep cannot check its flags")
    return module


def tyro_message(text: str) -> str:
    """tyro's boxed error message in one line: what it says, and its close match when it has one."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)  # (without colours)
    # the box's title, then its body; its borders and separator lines (drawn in ASCII when not on a terminal) go
    lines = [line.strip(" │|╭╮╰╯─") for line in text.splitlines() if not re.fullmatch(r"[\s│|╭╮╰╯─+-]*", line)]
    message = lines[1] if len(lines) > 1 else lines[0] if lines else "tyro rejected them"
    close = [lines[i + 1].split()[0] for i, line in enumerate(lines[:-1]) if line.startswith("Perhaps you meant")]
    return message + (f"; did you mean {close[0]}?" if close else "")


def parse(module, flags: list, where: str):
    """`flags` parsed into the script's Args as the script parses its command line."""
    import tyro

    said = io.StringIO()
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            return tyro.cli(module.Args, args=flags)
    except SystemExit as exc:
        if exc.code == 0:  # --help
            fail(f"{where}: they ask for the script's help; run the script with --help to read it")
        fail(f"{where}: {tyro_message(said.getvalue())}")


def as_json(value):
    """A value as config.json holds it (tuples as lists, ...)."""
    return json.loads(json.dumps(value, default=str))


def show(value) -> str:
    return value if isinstance(value, str) else json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def value_of(field: str, value) -> str:
    """A value as the message shows it: a bool as the scripts' command line gives it, `--layer-norm` or `--no-layer-norm`."""
    if isinstance(value, bool):
        return flag(field) if value else f"--no-{field.replace('_', '-')}"
    return show(value)


def setting(field: str, value) -> str:
    """`--num-envs 16`, `--no-layer-norm`: a setting as the scripts' command line gives it."""
    return value_of(field, value) if isinstance(value, bool) else f"{flag(field)} {show(value)}"


def differences(module, args, run_dir: str) -> list:
    """How the run in `run_dir` (its config.json) differs from `args`: what it learns, not where or how it runs."""
    try:
        with open(os.path.join(run_dir, "config.json")) as f:
            saved = json.load(f)
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return [f"its config.json cannot be read ({type(exc).__name__})"]
    unlisted = ROLLOUT_COMPUTED if "num_iterations" in {field.name for field in dataclasses.fields(module.Args)} else set()
    ignored = set(getattr(module, "RESUME_MAY_CHANGE", ())) | set(getattr(module, "COMPUTED", unlisted)) | {"run_name"}
    defaults = as_json(dataclasses.asdict(module.Args()))
    found = []
    values = as_json(dataclasses.asdict(args))
    for key in sorted(values, key=lambda key: key != "total_timesteps"):  # the budget first, the rest as Args has them
        value = values[key]
        if key in ignored:
            continue
        if key in saved and saved[key] != value:
            found.append(f"{setting(key, saved[key])}, this sweep: {value_of(key, value)}")
        elif key not in saved and value != defaults[key]:
            default = value_of(key, defaults[key])
            found.append(f"{flag(key)} not in its config.json (the default, {default}), this sweep: {value_of(key, value)}")
    return found


def summary(found: list) -> str:
    shown = "; ".join(found[:MAX_SHOWN])
    return shown + (f"; and {len(found) - MAX_SHOWN} more" if len(found) > MAX_SHOWN else "")


def check_runs(runs_dir: str, mismatched: str, fields: list):
    modules, records, tasks = {}, [], []
    fields = iter(fields)
    for kind in fields:  # read every record first: a bad one is found before any script is imported
        if kind == "flags":
            label, script, count = next(fields), next(fields), int(next(fields))
            records.append((label, script, [next(fields) for _ in range(count)]))
        elif kind == "task":
            name, script, locked, count = next(fields), next(fields), next(fields) == "1", int(next(fields))
            tasks.append((name, script, locked, [next(fields) for _ in range(count)]))
        else:
            fail(f"check_sweep.py: unknown record {kind!r}")
    other = []  # (task index, run folder, differences)
    for script in dict.fromkeys([script for _, script, _ in records] + [script for _, script, _, _ in tasks]):
        module = load_script(script, len(modules))  # one script at a time: a bad flag stops before the next import
        modules[script] = module
        for label, flags in dict.fromkeys((label, tuple(flags)) for label, path, flags in records if path == script):
            parse(module, list(flags), f"{label} for {os.path.basename(script)}")
    parsed = set()  # the commands parsed so far, but for the values the sweep varies (a string, a string, an integer)
    for index, (name, script, locked, flags) in enumerate(tasks):
        run_dir = os.path.join(runs_dir, name)
        compare = not locked and os.path.isfile(os.path.join(run_dir, "config.json"))  # a run going on is its own sweep's
        shape = (script, tuple("" if i and flags[i - 1] in SWEPT else word for i, word in enumerate(flags)))
        if compare or shape not in parsed:  # a fresh sweep parses one command per script and variant
            parsed.add(shape)
            args = parse(modules[script], flags, f"the command of {name}")
        found = differences(modules[script], args, run_dir) if compare else []
        if found:
            other.append((index, run_dir, found))
    if other and not mismatched:
        _, run_dir, found = other[0]
        replaced = os.path.join(runs_dir, "_replaced")
        if len(other) == 1:
            fail(
                f"{run_dir} holds a run with other settings ({summary(found)}): run this sweep with its flags, or give "
                f"--mismatched skip to leave it as it is or --mismatched redo to move it to {replaced}/ and run it again"
            )
        fail(
            f"{len(other)} runs in {runs_dir}/ hold other settings than this sweep's, e.g. {run_dir} ({summary(found)}): run "
            f"this sweep with their flags, or give --mismatched skip to leave them as they are or --mismatched redo to move "
            f"them to {replaced}/ and run them again"
        )
    for index, _, found in other:
        print(f"{index}\t{summary(found)}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["games"]:
        print("\n".join(env_ids(sys.argv[2:])))
    elif sys.argv[1:2] == ["runs"] and len(sys.argv) in (3, 4) and sys.argv[3:] in ([], [""], ["skip"], ["redo"]):
        records = sys.stdin.buffer.read().decode(errors="surrogateescape").split("\0")[:-1]  # each field ends in NUL
        check_runs(sys.argv[2], (sys.argv[3:] or [""])[0], records)
    else:
        fail("usage: check_sweep.py games NAME... | check_sweep.py runs RUNS_DIR [skip|redo] < records")
