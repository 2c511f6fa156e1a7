#!/usr/bin/env bash
# Sweeps the training scripts over variants x games x seeds, locally (N jobs at once) or as a Slurm array
# job, and writes the report (sweep/plot_results.py). Finished runs are skipped and interrupted ones resume
# from their checkpoints, so running the same command again resumes an interrupted sweep.
# `bash benchmark.sh --help` lists every flag.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SELF="$HERE/$(basename "${BASH_SOURCE[0]}")"
PYTHON="${PYTHON:-python}"
RUNS_DIR="runs"  # the training scripts write runs/<run_name>/ under their working directory (--runs-dir moves it)

die() { echo "error: $*" >&2; exit 2; }

usage() {
    cat <<'EOF'
Usage: bash benchmark.sh [options] [-- extra flags for the training scripts]

Sweeps scripts x variants x games x seeds. Each run is
  $PYTHON <script> --env-id <game> --seed <seed> <variant flags> --run-name <game>__<script>__<variant>__<seed> <extra flags>
run in the current directory, so it writes runs/<run name>/. A run whose directory holds done.json is
skipped; an interrupted run (no done.json) resumes from its checkpoint (runs/<run name>/checkpoint.pt), or
starts again when it has none. Its output is appended to runs/<run name>/train.log.
SIGINT or SIGTERM to this script passes SIGTERM to the runs, which write their checkpoints and stop; the
script waits for them and exits (a second signal kills the runs at once; their last checkpoints stay).

Sweep (flag, or environment variable; lists are space or comma separated):
  --scripts LIST        SCRIPTS          ppo, dqn, pqn or script paths       (default: ppo dqn pqn)
  --variants LIST       VARIANTS         <activation>[_hr|_pm] or a gate (PQN: _all before _pm for the conv layers too),
                                         then _ln (PPO, DQN) or _noln (PQN), then _redo (ReDo every REDO_INTERVAL env
                                         steps, default 10000):
                                         relu -> --activation relu, tanh -> (none), tanh_hr -> --hadamard,
                                         tanh_pm -> --param-matched, glu (swiglu, bilinear) -> --hadamard --gate glu,
                                         tanh_hr_ln -> --hadamard --layer-norm, tanh_noln -> --no-layer-norm,
                                         tanh_hr_all -> --hadamard --hadamard-scope all,
                                         tanh_redo -> --redo-interval 10000
                                                                              (default: relu tanh tanh_hr tanh_pm)
  --games LIST          GAMES            short names, any case (pong -> PongNoFrameskip-v4, ms_pacman ->
                                         MsPacmanNoFrameskip-v4) or env ids (<Game>NoFrameskip-v4, ALE/<Game>-v5,
                                         <Game>-v5)      (default: Breakout Pong BeamRider SpaceInvaders MsPacman)
  --seeds LIST          SEEDS            seeds                               (default: 1 2 3)
  --num-seeds N                          seeds 1..N
  --total-timesteps N   TOTAL_TIMESTEPS  budget of every run                 (default: each script's own)
  -- FLAGS...           SCRIPT_ARGS      flags after -- go to every script as they are (e.g. -- --num-envs 16)
                        PPO_ARGS, DQN_ARGS, PQN_ARGS  flags for that script only (after the others)
                        What the sweep varies is not a script flag: --seed, --env-id, --hadamard, --activation, --gate,
                        --hadamard-scope, --param-matched, --layer-norm, --redo-interval and --run-name there are errors
                        (use --seeds, --games, --variants).
                        Any other option before -- is an error: a typo never launches a sweep, and the script flags
                        are parsed by each script's own Args before the sweep starts.
  --mismatched skip|redo                 what to do with a run folder (finished or interrupted) whose config.json
                                         holds other settings than this sweep's command for it, which is otherwise
                                         an error: skip leaves it as it is and out of this sweep; redo moves it to
                                         runs/_replaced/<run name>-<time>/ (kept; the report does not read it)
                                         and runs it again
  --quick                                quick profile: ppo on Breakout, seeds 1 2, the four variants,
                                         50k steps, metrics every 5k steps, 2 jobs (flags still override)
  --threads N           THREADS          torch/OpenMP threads per run, locally and under Slurm (default: 1)
Local mode:
  --jobs N              JOBS             runs at once (--slurm: --slurm-parallel)  (default: 1)
  --dry-run                              print the commands, run nothing
Slurm mode:
  --slurm                                write an sbatch array job (one task per unfinished run) from
                                         sweep/slurm_template.sbatch to runs/_slurm/<time>/ and submit it
  --slurm-time T        SBATCH_TIME      time limit of a task's allocation; a longer run goes on in the next
                                         (the task requeues itself)          (default: 48:00:00)
  --slurm-cpus N        SBATCH_CPUS      CPUs per run                        (default: 4)
  --slurm-mem M         SBATCH_MEM       memory per run                      (default: 16G)
  --slurm-parallel N    SBATCH_PARALLEL  runs at once (array throttle %N)    (default: no limit)
  --slurm-grace S       SBATCH_GRACE     seconds before the time limit at which a task checkpoints its run and
                                         requeues itself (--signal=B:USR1@S; Slurm sends it up to 60 s early)
                                                                              (default: 300)
  --sbatch-args "ARGS"  SBATCH_EXTRA     more #SBATCH options, e.g. "--partition=gpu --gres=gpu:1"
Report:
  --report                               after the sweep, write the report (sweep/plot_results.py)
  --report-only                          only write the report from the runs there are (takes --out and
                                         --runs-dir, no other option)
  --out DIR             REPORT_DIR       report folder                       (default: results)
  --runs-dir DIR                         where the runs are written and read: a folder named runs (the scripts
                                         write runs/<run name>/ in their working directory, so each runs in
                                         its parent)                         (default: runs)
Python: PYTHON (default: python, i.e. the active virtual environment). The checks before a sweep (games, script
flags, the settings of the runs there are) run it here in every mode, --dry-run and --slurm too, so it must work on
the machine that launches the sweep; a Slurm job runs the same command on the nodes.
EOF
}

# ---------------------------------------------------------------------------------------------------------
# One run of a task list (used by local mode and by each Slurm array task): skip it when finished, resume it
# when interrupted (the script finds its checkpoint), append its output to the log in the run directory.
# SIGTERM, SIGINT and SIGUSR1 reach the run once, through this shell: as SIGTERM (a second SIGINT would make
# the run exit without its checkpoint) or SIGUSR1, Slurm's warning before the time limit, after which the
# task requeues itself on Slurm.
run_task() {
    local tasks="$1" index="$2" line name cmd run_dir total status start verb child="" signalled="" trapped=0 rc step log_start
    [[ -f "$tasks" ]] || die "task list $tasks not found"
    line="$(sed -n "${index}p" "$tasks")"
    [[ -n "$line" ]] || die "task list $tasks has no line $index"
    total="$(wc -l <"$tasks" | tr -d ' ')"
    name="${line%%$'\t'*}"
    cmd="${line#*$'\t'}"
    run_dir="$RUNS_DIR/$name"
    if command -v flock >/dev/null 2>&1; then  # a second launch of the same sweep leaves a running run alone
        mkdir -p "$RUNS_DIR/.locks"
        exec 9>"$RUNS_DIR/.locks/$name.lock"
        if ! flock -n 9; then
            echo "[$index/$total] skip $name (running in another sweep)"
            return 0
        fi
    fi
    if [[ -f "$run_dir/done.json" ]]; then
        echo "[$index/$total] skip $name (finished)"
        return 0
    fi
    verb=start
    [[ -f "$run_dir/checkpoint.pt" ]] && verb=resume
    mkdir -p "$run_dir"
    echo "[$index/$total] $verb $name"
    echo "# $(date '+%F %T') $verb on $(hostname)${SLURM_JOB_ID:+ (Slurm job $SLURM_JOB_ID)}: $cmd" >>"$run_dir/train.log"
    log_start=$(wc -c <"$run_dir/train.log")  # where this allocation's output begins
    start=$SECONDS
    status=0
    trap 'signalled=${signalled:-TERM}; trapped=1; [[ -z "$child" ]] || kill -TERM "$child" 2>/dev/null || true' TERM INT
    trap 'signalled=USR1; trapped=1; [[ -z "$child" ]] || kill -USR1 "$child" 2>/dev/null || true' USR1
    # exec: the python process itself is the child the signals go to; the lock stays with this shell
    (eval "${cmd/OMP_NUM_THREADS=/exec env OMP_NUM_THREADS=}") >>"$run_dir/train.log" 2>&1 </dev/null 9>&- &
    child=$!
    [[ -z "$signalled" ]] || kill -TERM "$child" 2>/dev/null || true  # a signal that came before the run started
    while :; do  # a trapped signal ends `wait` early, with the signal's status: wait again for the run's own
        trapped=0
        wait "$child" && rc=0 || rc=$?
        [[ $trapped -eq 1 && $rc -gt 128 ]] || { status=$rc; break; }
    done
    trap - TERM INT USR1
    # done.json, the run's last write, says it finished, whatever the status (127 when a signal came as it ended)
    if [[ -f "$run_dir/done.json" ]]; then
        echo "[$index/$total] done  $name ($((SECONDS - start)) s)"
        return 0
    fi
    if [[ -n "$signalled" ]]; then
        step="$(tail -c +"$((log_start + 1))" "$run_dir/train.log" | grep -o 'interrupted at step [0-9]*' | grep -o '[0-9]*$')" || true
        if [[ -f "$run_dir/checkpoint.pt" ]]; then
            echo "[$index/$total] interrupted $name${step:+ at step $step} ($((SECONDS - start)) s): its checkpoint resumes it"
        else
            echo "[$index/$total] interrupted $name before its first checkpoint ($((SECONDS - start)) s): it starts again"
        fi
        if [[ "$signalled" == USR1 && -n "${SLURM_JOB_ID:-}" ]]; then  # Slurm's warning before the time limit: come back later
            local job="${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}${SLURM_ARRAY_TASK_ID:+_$SLURM_ARRAY_TASK_ID}"
            echo "[$index/$total] requeueing Slurm job $job"
            scontrol requeue "$job" || echo "[$index/$total] scontrol requeue $job failed: run the sweep again to resume" >&2
        fi
        return $((status == 0 ? 1 : status))
    fi
    [[ $status -ne 0 ]] || status=1
    echo "[$index/$total] FAILED $name (exit $status); log: $run_dir/train.log" >&2
    tail -n 5 "$run_dir/train.log" | sed 's/^/    /' >&2
    return "$status"
}

is_locked() {  # is run $1 going on in another sweep (its run task holds the lock)?
    local lock="$RUNS_DIR/.locks/$1.lock"
    command -v flock >/dev/null 2>&1 && [[ -f "$lock" ]] && ! flock -n "$lock" true
}

if [[ "${1:-}" == "--run-task" ]]; then
    [[ $# -eq 3 || $# -eq 4 ]] || die "usage: benchmark.sh --run-task TASK_LIST LINE [RUNS_DIR]"
    RUNS_DIR="${4:-$RUNS_DIR}"
    run_task "$2" "$3"
    exit $?
fi

# ---------------------------------------------------------------------------------------------------------
# Options: flags > environment variables > --quick profile > defaults.
split_list() { tr ',' ' ' <<<"$1"; }
need_value() { [[ $# -ge 2 ]] || die "$1 needs a value"; }
OPTIONS=(--help --scripts --variants --games --seeds --num-seeds --total-timesteps --mismatched --jobs --threads --quick
         --dry-run --slurm --slurm-time --slurm-cpus --slurm-mem --slurm-parallel --slurm-grace --sbatch-args --report
         --report-only --out --runs-dir)
USE_VENV="activate the project's virtual environment or set PYTHON"
close_match() {  # "; did you mean --seeds?" for --seed, or nothing (names compared without their "--": --bogus is no --out)
    local match
    match="$("$PYTHON" -c 'import difflib, sys; print(*difflib.get_close_matches(sys.argv[1], sys.argv[2:], 1, 0.6))' \
             "${1#--}" "${OPTIONS[@]#--}")" || die "python '$PYTHON' failed to run (looking for an option close to $1): $USE_VENV"
    [[ -z "$match" ]] || echo "; did you mean --$match?"
}
check_python() {  # the sweep's python exists and runs, in every mode (a bad one would pass a dry run, then fail every run)
    command -v "$PYTHON" >/dev/null 2>&1 || die "python '$PYTHON' not found: $USE_VENV"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 9))' >/dev/null 2>&1 ||
        die "'$PYTHON' does not run as python 3.9 or newer: $USE_VENV"
}
check_script_flags() {  # $1: where the flags come from; the rest: the flags. What the sweep varies is not a script flag.
    local where="$1" word
    shift
    for word in "$@"; do
        case "${word%%=*}" in
            --seed) die "$where sets --seed, which the sweep varies: use benchmark.sh --seeds" ;;
            --env-id) die "$where sets --env-id, which the sweep varies: use benchmark.sh --games" ;;
            --hadamard|--no-hadamard|--activation|--gate|--hadamard-scope|--param-matched|--no-param-matched|--layer-norm|--no-layer-norm|--redo-interval)
                die "$where sets ${word%%=*}, which the sweep varies: use benchmark.sh --variants" ;;
            --run-name) die "$where sets --run-name, which the sweep sets for each run" ;;
        esac
    done
}

opt_scripts="" opt_variants="" opt_games="" opt_seeds="" opt_jobs="" opt_threads="" opt_steps=""
quick=0 dry_run=0 slurm=0 report=0 report_only=0 mismatched=""
slurm_time="${SBATCH_TIME:-48:00:00}" slurm_cpus="${SBATCH_CPUS:-4}" slurm_mem="${SBATCH_MEM:-16G}"
slurm_parallel="${SBATCH_PARALLEL:-}" sbatch_extra="${SBATCH_EXTRA:-}" report_dir="${REPORT_DIR:-results}"
slurm_grace="${SBATCH_GRACE:-300}"
passthrough=()
sweep_opts=()  # what is given besides --report-only's own options: with --report-only, it would do nothing
while [[ $# -gt 0 ]]; do
    [[ "$1" =~ ^(--report-only|--out|--runs-dir|-h|--help)$ ]] || sweep_opts+=("$1")
    case "$1" in
        -h|--help) usage; exit 0 ;;
        --scripts) need_value "$@"; opt_scripts="$2"; shift 2 ;;
        --variants) need_value "$@"; opt_variants="$2"; shift 2 ;;
        --games) need_value "$@"; opt_games="$2"; shift 2 ;;
        --seeds) need_value "$@"; opt_seeds="$2"; shift 2 ;;
        --num-seeds) need_value "$@"; [[ "$2" =~ ^[1-9][0-9]*$ ]] || die "--num-seeds must be a positive integer, got '$2'"
            opt_seeds="$(seq -s ' ' 1 "$2")"; shift 2 ;;
        --total-timesteps) need_value "$@"; opt_steps="$2"; shift 2 ;;
        --mismatched) need_value "$@"; mismatched="$2"; shift 2
            [[ "$mismatched" =~ ^(skip|redo)$ ]] || die "--mismatched must be skip or redo, got '$mismatched'" ;;
        --jobs) need_value "$@"; opt_jobs="$2"; shift 2 ;;
        --threads) need_value "$@"; opt_threads="$2"; shift 2 ;;
        --quick) quick=1; shift ;;
        --dry-run) dry_run=1; shift ;;
        --slurm) slurm=1; shift ;;
        --slurm-time) need_value "$@"; slurm_time="$2"; shift 2 ;;
        --slurm-cpus) need_value "$@"; slurm_cpus="$2"; shift 2 ;;
        --slurm-mem) need_value "$@"; slurm_mem="$2"; shift 2 ;;
        --slurm-parallel) need_value "$@"; slurm_parallel="$2"; shift 2 ;;
        --slurm-grace) need_value "$@"; slurm_grace="$2"; shift 2 ;;
        --sbatch-args) need_value "$@"; sbatch_extra="$2"; shift 2 ;;
        --report) report=1; shift ;;
        --report-only) report_only=1; shift ;;
        --out) need_value "$@"; report_dir="$2"; shift 2 ;;
        --runs-dir) need_value "$@"; RUNS_DIR="${2%/}"; shift 2
            [[ "$(basename "$RUNS_DIR")" == runs ]] || die "--runs-dir must be a folder named runs (the scripts write runs/<run name>/ in their working directory), e.g. sweep1/runs; got '$RUNS_DIR'" ;;
        --) shift; passthrough+=("$@"); break ;;
        -*) check_python; hint="$(close_match "$1")" || exit 2
            die "unknown option $1$hint (flags for the training scripts go after --)" ;;
        *) die "unexpected argument '$1' (flags for the training scripts go after --)" ;;
    esac
done

[[ $slurm -eq 0 || -z "$opt_jobs" ]] || die "--jobs sets the runs at once of a local sweep: with --slurm, use --slurm-parallel"
[[ $report_only -eq 0 || ${#sweep_opts[@]} -eq 0 ]] ||
    die "--report-only reports the runs in --runs-dir and runs nothing: ${sweep_opts[*]} would do nothing"
check_python
run_report() {
    local command=("$PYTHON" "$HERE/sweep/plot_results.py" --runs-dir "$RUNS_DIR" --out "$report_dir")
    local line
    printf -v line '%q ' "${command[@]}"
    echo "report: ${line% }"
    "${command[@]}"
}
if [[ $report_only -eq 1 ]]; then
    run_report
    exit $?
fi

if [[ $quick -eq 1 ]]; then
    q_scripts="ppo" q_games="Breakout" q_seeds="1 2" q_jobs=2 q_steps=50000
    q_args=(--metrics-interval 5000)
else
    q_scripts="ppo dqn pqn" q_games="Breakout Pong BeamRider SpaceInvaders MsPacman" q_seeds="1 2 3" q_jobs=1 q_steps=""
    q_args=()
fi
scripts="$(split_list "${opt_scripts:-${SCRIPTS:-$q_scripts}}")"
variants="$(split_list "${opt_variants:-${VARIANTS:-relu tanh tanh_hr tanh_pm}}")"
games="$(split_list "${opt_games:-${GAMES:-$q_games}}")"
seeds="$(split_list "${opt_seeds:-${SEEDS:-$q_seeds}}")"
jobs="${opt_jobs:-${JOBS:-$q_jobs}}"
threads="${opt_threads:-${THREADS:-1}}"
steps="${opt_steps:-${TOTAL_TIMESTEPS:-$q_steps}}"
read -r -a env_args <<<"${SCRIPT_ARGS:-}"
check_script_flags "SCRIPT_ARGS" "${env_args[@]+"${env_args[@]}"}"
check_script_flags "a flag after --" "${passthrough[@]+"${passthrough[@]}"}"
extra=("${q_args[@]+"${q_args[@]}"}" "${env_args[@]+"${env_args[@]}"}" "${passthrough[@]+"${passthrough[@]}"}")

# Checks: bad input is one clear line, before anything is written.
[[ "$jobs" =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer, got '$jobs'"
[[ "$threads" =~ ^[1-9][0-9]*$ ]] || die "--threads must be a positive integer, got '$threads'"
[[ -z "$steps" || "$steps" =~ ^[1-9][0-9]*$ ]] || die "--total-timesteps must be a positive integer, got '$steps'"
[[ -z "$slurm_parallel" || "$slurm_parallel" =~ ^[1-9][0-9]*$ ]] || die "--slurm-parallel must be a positive integer, got '$slurm_parallel'"
[[ "$slurm_grace" =~ ^[1-9][0-9]*$ ]] || die "--slurm-grace must be a positive number of seconds, got '$slurm_grace'"
[[ -n "${scripts// /}" ]] || die "no scripts to run"
[[ -n "${variants// /}" ]] || die "no variants to run"
[[ -n "${games// /}" ]] || die "no games to run"
[[ -n "${seeds// /}" ]] || die "no seeds to run"
for seed in $seeds; do
    [[ "$seed" =~ ^[0-9]+$ ]] || die "seeds must be integers, got '$seed'"
done
[[ -n "$steps" ]] && extra=(--total-timesteps "$steps" "${extra[@]+"${extra[@]}"}")

script_path() {  # ppo -> <repo>/ppo_atari_hadamard.py; a path stays a path
    case "$1" in
        */*|*.py) echo "$1" ;;
        *) echo "$HERE/${1}_atari_hadamard.py" ;;
    esac
}
variant_flags() {  # $1: a variant, $2: the script's path; prints the variant's flags for that script
    local unknown="unknown variant '$1' (expected <activation>[_hr|_pm] with activation tanh, relu, sigmoid or gelu, or a gate glu, swiglu or bilinear; for PQN _all before _pm; then _ln for PPO and DQN or _noln for PQN; then _redo; e.g. tanh_hr, tanh_hr_all, glu_ln, tanh_redo)"
    [[ "$1" =~ ^(((tanh|relu|sigmoid|gelu)(_hr)?|glu|swiglu|bilinear)(_all)?(_pm)?)(_ln|_noln)?(_redo)?$ ]] || die "$unknown"
    local representation="${BASH_REMATCH[2]}" activation="${BASH_REMATCH[3]}" hr="${BASH_REMATCH[4]}" scope="${BASH_REMATCH[5]}"
    local pm="${BASH_REMATCH[6]}" norm="${BASH_REMATCH[7]}" redo="${BASH_REMATCH[8]}"
    [[ -n "$pm" && ( -n "$hr" || -z "$activation" ) ]] && die "$unknown"  # _pm widens a plain representation
    local flags=() stem
    stem="$(basename "$2" .py)"
    if [[ -z "$activation" ]]; then  # a gate: the form of the two-branch representation, with activations of its own
        flags+=(--hadamard --gate "$representation")
    else
        [[ "$activation" == tanh ]] || flags+=(--activation "$activation")
        [[ -n "$hr" ]] && flags+=(--hadamard)
    fi
    # PQN only: the convs too take the activation (and HR or the gate), as in the paper's PQN figure
    if [[ -n "$scope" ]]; then
        [[ "${stem%%_*}" == pqn ]] || die "variant '$1' is not one of $stem.py's: only PQN has --hadamard-scope all (_all)"
        flags+=(--hadamard-scope all)
    fi
    [[ -n "$pm" ]] && flags+=(--param-matched)
    # PPO and DQN have no LayerNorm unless --layer-norm; PQN has it unless --no-layer-norm
    if [[ "$norm" == _ln ]]; then
        [[ "${stem%%_*}" != pqn ]] || die "variant '$1' is not one of $stem.py's: it has LayerNorm already (${1%_ln} is it; _noln takes it off)"
        flags+=(--layer-norm)
    elif [[ "$norm" == _noln ]]; then
        [[ "${stem%%_*}" == pqn ]] || die "variant '$1' is not one of $stem.py's: it has no LayerNorm to take off (_ln puts it on)"
        flags+=(--no-layer-norm)
    fi
    # ReDo at an interval of the sweep's (REDO_INTERVAL env steps; 10000 by default, not tuned), its other flags the script's
    if [[ -n "$redo" ]]; then
        [[ "${REDO_INTERVAL:-10000}" =~ ^[1-9][0-9]*$ ]] || die "REDO_INTERVAL must be a positive integer, got '$REDO_INTERVAL'"
        flags+=(--redo-interval "${REDO_INTERVAL:-10000}")
    fi
    echo "${flags[*]-}"
}
for script in $scripts; do
    [[ -f "$(script_path "$script")" ]] || die "training script $(script_path "$script") not found"
    for variant in $variants; do variant_flags "$variant" "$(script_path "$script")" >/dev/null; done
done
# each game's env id, as ale-py names the game (pong -> PongNoFrameskip-v4): one game, one run name
env_ids="$("$PYTHON" "$HERE/sweep/check_sweep.py" games $games)" || exit 2

# ---------------------------------------------------------------------------------------------------------
# The task list: one line per run, "<run name>\t<command>", in a stable order.
names=() stems=() commands=() locked=()
checks=() to_check=0  # for sweep/check_sweep.py: each script's flags, and each run's (see there); whether it has work
in_work_dir=""  # each run works in the parent of the runs folder
[[ "$RUNS_DIR" == runs ]] || in_work_dir="cd $(printf '%q' "$(realpath -m "$(dirname "$RUNS_DIR")")") && "
for script in $scripts; do
    path="$(script_path "$script")"
    stem="$(basename "$path" .py)"
    own_var="$(tr '[:lower:]-' '[:upper:]_' <<<"${stem%%_*}")_ARGS"  # ppo_atari_hadamard -> PPO_ARGS
    read -r -a own_args <<<"${!own_var:-}"
    check_script_flags "$own_var" "${own_args[@]+"${own_args[@]}"}"
    for group in "SCRIPT_ARGS" "the flags after --" "$own_var"; do
        case "$group" in
            SCRIPT_ARGS) flags=("${env_args[@]+"${env_args[@]}"}") ;;
            "the flags after --") flags=("${passthrough[@]+"${passthrough[@]}"}") ;;
            *) flags=("${own_args[@]+"${own_args[@]}"}") ;;
        esac
        [[ ${#flags[@]} -eq 0 ]] || { checks+=(flags "$group" "$path" "${#flags[@]}" "${flags[@]}"); to_check=1; }
    done
    for id in $env_ids; do
        for variant in $variants; do
            read -r -a vflags <<<"$(variant_flags "$variant" "$path")"
            for seed in $seeds; do
                name="${id//\//-}__${stem}__${variant}__${seed}"
                cmd=("$PYTHON" "$path" --env-id "$id" --seed "$seed" "${vflags[@]+"${vflags[@]}"}" --run-name "$name"
                     "${extra[@]+"${extra[@]}"}" "${own_args[@]+"${own_args[@]}"}")
                names+=("$name")
                stems+=("$stem")
                commands+=("$in_work_dir""OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads$(printf ' %q' "${cmd[@]}")")
                [[ ! -f "$RUNS_DIR/$name/done.json" ]] && is_locked "$name" && lock=1 || lock=0
                locked+=("$lock")
                checks+=(task "$name" "$path" "$lock" "$((${#cmd[@]} - 2))" "${cmd[@]:2}")
                [[ $lock -eq 1 || ! -f "$RUNS_DIR/$name/config.json" ]] || to_check=1
            done
        done
    done
done

# Before anything runs, with the sweep's python: each script parses its flags, and each run folder there is (finished
# or interrupted) holds the settings its command would run with, or --mismatched says what to do with it. It imports
# the scripts (torch: seconds), so a fresh sweep without script flags, which has nothing to check, goes without it.
other_runs=""
if [[ $to_check -eq 1 ]]; then
    other_runs="$(printf '%s\0' "${checks[@]}" | "$PYTHON" "$HERE/sweep/check_sweep.py" runs "$RUNS_DIR" "$mismatched")" ||
        exit 2  # it said why
fi
other=()  # how each run of other settings differs, by task index
while IFS=$'\t' read -r i differences; do
    [[ -z "$i" ]] || other[$i]="$differences"
done <<<"$other_runs"

todo=() redo=() finished=0 interrupted=0 running=0
for i in "${!names[@]}"; do
    if [[ -n "${other[$i]:-}" && "$mismatched" == skip ]]; then
        continue
    elif [[ -n "${other[$i]:-}" ]]; then
        redo+=("$i")
        todo+=("$i")
    elif [[ -f "$RUNS_DIR/${names[$i]}/done.json" ]]; then
        finished=$((finished + 1))
    elif [[ ${locked[$i]} -eq 1 ]]; then
        running=$((running + 1))
    else
        [[ -d "$RUNS_DIR/${names[$i]}" ]] && interrupted=$((interrupted + 1))
        todo+=("$i")
    fi
done

estimate() {  # roughly how long the runs to do take, at the speed of the finished runs of the same script here
    [[ ${#todo[@]} -gt 0 ]] || { echo "nothing to run"; return; }
    [[ -n "$steps" ]] || { echo "duration unknown: give --total-timesteps to estimate it"; return; }
    local todo_names=() fresh=() i
    for i in "${todo[@]}"; do todo_names+=("${names[$i]}"); done
    for i in "${redo[@]}"; do fresh+=("${names[$i]}"); done  # their folders move away: they start from step 0
    FRESH="${fresh[*]-}" "$PYTHON" - "$RUNS_DIR" "$jobs" "$steps" "$slurm" "${todo_names[@]}" 2>/dev/null <<'PY' || echo "duration unknown"
import glob, json, os, re, statistics, sys
runs_dir, jobs, steps, slurm, names = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1", sys.argv[5:]
stems = [name.split("__")[1] for name in names]


def steps_done(name: str) -> int:
    """An interrupted run's last step in its train.log (its progress lines, its interrupt or resume line): it resumes
    there, or up to a checkpoint interval before it after a hard kill. 0 for a run that starts afresh."""
    if name in os.environ["FRESH"].split():
        return 0
    try:
        log = open(os.path.join(runs_dir, name, "train.log"), errors="replace").read()
    except OSError:
        return 0
    found = re.findall(r"^(?:step +([\d,]+)/|interrupted at step (\d+)|resuming from step (\d+))", log, re.M)
    return min(steps, int("".join(found[-1]).replace(",", ""))) if found else 0


speeds = {}
for path in glob.glob(os.path.join(runs_dir, "*", "done.json")):
    done, parts = json.load(open(path)), os.path.basename(os.path.dirname(path)).split("__")
    if len(parts) == 4 and done.get("global_step") and done.get("wall_time_s"):
        speeds.setdefault(parts[1], []).append(done["global_step"] / done["wall_time_s"])
missing = sorted(set(stems) - set(speeds))
if missing:
    print(f"duration unknown: no finished run of {', '.join(missing)} here to time")
else:
    per_run = [(steps - steps_done(name)) / statistics.median(speeds[stem]) / 3600 for name, stem in zip(names, stems)]
    hours, at_once = sum(per_run), max(sum(per_run) / jobs, max(per_run))  # (N at once: no sooner than the longest run)
    print(f"about {hours:.1f} h of runs in all" + ("" if slurm else f", {at_once:.1f} h at {jobs} at once") +
          " (at the median speed of the finished runs here)")
PY
}
replaced="$RUNS_DIR/_replaced"  # where --mismatched redo moves a run of other settings; the report reads runs/*/ only
redone="" skipped=""
[[ ${#redo[@]} -eq 0 ]] || redone="; ${#redo[@]} of other settings: they move to $replaced/ and run again"
[[ ${#other[@]} -eq 0 || "$mismatched" != skip ]] || skipped=", ${#other[@]} of other settings (skipped: --mismatched skip)"
echo "# sweep: ${#names[@]} runs ($scripts x $variants x $games x seeds $seeds): ${#todo[@]} to run" \
     "($interrupted of them interrupted: they resume from their checkpoints$redone), $running running in another sweep" \
     "(left alone), $finished finished (skipped)$skipped; $(estimate)"

if [[ $dry_run -eq 1 && $slurm -eq 0 ]]; then
    for i in "${!names[@]}"; do
        if [[ -n "${other[$i]:-}" && "$mismatched" == skip ]]; then
            echo "# skip (other settings: ${other[$i]}): ${names[$i]}"
        elif [[ -n "${other[$i]:-}" ]]; then
            echo "# redo (other settings: ${other[$i]}; its folder moves to $replaced/): ${names[$i]}"
            echo "${commands[$i]}"
        elif [[ -f "$RUNS_DIR/${names[$i]}/done.json" ]]; then
            echo "# skip (finished): ${names[$i]}"
        elif [[ ${locked[$i]} -eq 1 ]]; then
            echo "# skip (running in another sweep): ${names[$i]}"
        else
            echo "${commands[$i]}"
        fi
    done
    exit 0
fi

replace_runs() {  # --mismatched redo: each run of other settings moves to $replaced/<run name>-<time>/, never deleted
    local i name target stamp
    stamp="$(date +%Y%m%d-%H%M%S)"
    for i in "${redo[@]+"${redo[@]}"}"; do
        name="${names[$i]}"
        target="$replaced/$name-$stamp"
        [[ ! -e "$target" ]] || die "$target exists already: run the sweep again in a second"
        mkdir -p "$replaced"
        if command -v flock >/dev/null 2>&1; then  # under the run's lock: a run another sweep has started since stays
            mkdir -p "$RUNS_DIR/.locks"
            (flock -n 9 || die "$RUNS_DIR/$name has started in another sweep: left as it is; run this sweep again when it ends"
             mv "$RUNS_DIR/$name" "$target") 9>"$RUNS_DIR/.locks/$name.lock" || exit 2
        else
            mv "$RUNS_DIR/$name" "$target"
        fi
        echo "# moved $RUNS_DIR/$name (other settings: ${other[$i]}) to $target"
    done
}

write_tasks() {  # the unfinished runs' lines into $1
    : >"$1"
    local i
    for i in "${todo[@]+"${todo[@]}"}"; do
        printf '%s\t%s\n' "${names[$i]}" "${commands[$i]}" >>"$1"
    done
}

# ---------------------------------------------------------------------------------------------------------
if [[ $slurm -eq 1 ]]; then
    if [[ ${#todo[@]} -eq 0 ]]; then
        echo "every run is finished: nothing to submit"
        [[ $report -eq 1 ]] && run_report
        exit 0
    fi
    template="$HERE/sweep/slurm_template.sbatch"
    [[ -f "$template" ]] || die "Slurm template $template not found"
    [[ $dry_run -eq 0 || ${#redo[@]} -eq 0 ]] ||
        die "--mismatched redo with --slurm --dry-run: a dry run moves no run aside, so the job it writes would find" \
            "${#redo[@]} runs of other settings; leave out --dry-run or use --mismatched skip"
    replace_runs
    sweep_dir="$(realpath -m "$RUNS_DIR")/_slurm/$(date +%Y%m%d-%H%M%S)-$$"
    mkdir -p "$sweep_dir"
    write_tasks "$sweep_dir/tasks.tsv"
    array="0-$((${#todo[@]} - 1))${slurm_parallel:+%$slurm_parallel}"
    sbatch_lines=""
    for option in $sbatch_extra; do sbatch_lines+="#SBATCH $option"$'\n'; done
    job="$(cat "$template")"
    job="${job//\{\{JOB_NAME\}\}/hadamard-benchmark}"
    job="${job//\{\{ARRAY\}\}/$array}"
    job="${job//\{\{CPUS_PER_TASK\}\}/$slurm_cpus}"
    job="${job//\{\{MEM\}\}/$slurm_mem}"
    job="${job//\{\{TIME\}\}/$slurm_time}"
    job="${job//\{\{GRACE\}\}/$slurm_grace}"
    job="${job//\{\{LOG_DIR\}\}/$sweep_dir}"
    job="${job//\{\{SBATCH_LINES\}\}/${sbatch_lines%$'\n'}}"
    job="${job//\{\{WORKDIR\}\}/$(printf '%q' "$(pwd)")}"
    job="${job//\{\{BENCHMARK\}\}/$(printf '%q' "$SELF")}"
    job="${job//\{\{TASKS\}\}/$(printf '%q' "$sweep_dir/tasks.tsv")}"
    job="${job//\{\{RUNS_DIR\}\}/$(printf '%q' "$(realpath -m "$RUNS_DIR")")}"
    printf '%s\n' "$job" >"$sweep_dir/job.sbatch"
    echo "wrote $sweep_dir/job.sbatch: an array of ${#todo[@]} runs (task list $sweep_dir/tasks.tsv)"
    if [[ $dry_run -eq 1 ]]; then
        cut -f2- "$sweep_dir/tasks.tsv"
        echo "dry run: not submitted; submit with: sbatch $(printf '%q' "$sweep_dir/job.sbatch")"
    elif command -v sbatch >/dev/null 2>&1; then
        sbatch "$sweep_dir/job.sbatch"
        # the command as it is to be typed, from any folder: this sweep's python, runs and report folder
        report_command="bash $(printf '%q' "$SELF") --report-only --runs-dir $(printf '%q' "$(realpath -m "$RUNS_DIR")")"
        report_command+=" --out $(printf '%q' "$(realpath -m "$report_dir")")"
        [[ "$PYTHON" == python ]] || report_command="PYTHON=$(printf '%q' "$PYTHON") $report_command"
        echo "submitted; when it has finished, write the report with: $report_command"
    else
        echo "sbatch not found (not a Slurm machine): submit the job script there with: sbatch $(printf '%q' "$sweep_dir/job.sbatch")"
    fi
    exit 0
fi

# ---------------------------------------------------------------------------------------------------------
# Local mode: $jobs runs at once; one line per run start/end, each run's output in runs/<name>/train.log.
status=0
if [[ ${#todo[@]} -gt 0 ]]; then
    replace_runs
    mkdir -p "$RUNS_DIR"
    tasks="$(mktemp "${TMPDIR:-/tmp}/benchmark-tasks.XXXXXX")"
    trap 'rm -f "$tasks" "$tasks.lines"' EXIT
    write_tasks "$tasks"
    seq 1 "${#todo[@]}" >"$tasks.lines"
    # The runs get a process group of their own (job control), so that a Ctrl-C at the terminal reaches only this
    # script, which passes SIGTERM to the whole group: xargs stops starting runs, each run task passes it to its run.
    set -m
    xargs -P "$jobs" -I{} bash "$SELF" --run-task "$tasks" {} "$RUNS_DIR" <"$tasks.lines" &
    runs=$!
    set +m
    stopping=""
    stop_runs() {
        if [[ -n "$stopping" ]]; then
            echo "# sweep: $1 again: killing the runs (their last checkpoints stay)" >&2
            kill -KILL -- "-$runs" 2>/dev/null || true
            return
        fi
        stopping=$1
        echo "# sweep: $1: stopping the runs; each writes its checkpoint (a second signal kills them)" >&2
        kill -TERM -- "-$runs" 2>/dev/null || true
    }
    trap 'stop_runs SIGINT' INT
    trap 'stop_runs SIGTERM' TERM
    while :; do  # a trapped signal ends `wait` early; then wait for every run task of the group to end
        wait "$runs" && rc=0 || rc=$?
        [[ -n "$stopping" ]] || { [[ $rc -eq 0 ]] || status=$rc; break; }
        kill -0 -- "-$runs" 2>/dev/null || break
        sleep 0.2
    done
    trap - INT TERM
    failed=0 elsewhere=0 stopped=0
    for i in "${todo[@]}"; do
        [[ -f "$RUNS_DIR/${names[$i]}/done.json" ]] && continue
        if is_locked "${names[$i]}"; then elsewhere=$((elsewhere + 1))
        elif [[ -n "$stopping" ]]; then stopped=$((stopped + 1))
        else failed=$((failed + 1)); fi
    done
    if [[ -n "$stopping" ]]; then
        echo "# sweep: stopped by $stopping: $(( ${#todo[@]} - stopped - elsewhere )) of ${#todo[@]} runs finished now, $finished before;" \
             "$stopped unfinished (run the same command to resume them from their checkpoints)"
        [[ "$stopping" == SIGINT ]] && exit 130
        exit 143
    fi
    echo "# sweep: $(( ${#todo[@]} - failed - elsewhere )) of ${#todo[@]} runs finished now, $finished before;" \
         "$((running + elsewhere)) running in another sweep; $failed failed (logs: $RUNS_DIR/<run name>/train.log; run the same command again to retry them)"
    [[ $failed -eq 0 ]] || status=1
fi
if [[ $report -eq 1 ]]; then
    run_report || status=$?
fi
exit "$status"
