"""The sbatch scripts of a point: training (multi-node torchrun) and, optionally, its eval.

Training, one job per point::

    #SBATCH --nodes=N --ntasks-per-node=1 [--gpus-per-node=G] --signal=USR1@S --requeue ...
    srun (one task per node) -> torchrun --nnodes=$SLURM_NNODES --node-rank=$SLURM_NODEID
         --nproc-per-node=P --rdzv-backend=c10d --rdzv-endpoint=<first node>:<port>
         -m ablate.cli train RUN_DIR/recipe.yaml --resume auto

Signals. ``--signal=USR1@S`` makes Slurm send USR1 to every process of the job's steps S
seconds before the time limit (``scancel --signal=USR1 JOB`` does the same on request). The
training processes catch it, finish the step, write a checkpoint and exit with status.json
``preempted``. torchrun's agent would die of USR1 (it does not handle it) and take the workers
down with it, so the per-node shell ignores USR1 before it execs torchrun: an ignored signal
stays ignored across exec, the agent outlives it, and the workers install their own handler.
When training comes back ``preempted`` the batch script requeues the job (``--requeue``); the
requeued job resumes from that checkpoint (``--resume auto``) under the same job id.

The eval job runs ``ablate eval RUN_DIR`` once the training job has ended well
(``--dependency=afterok:<id>``, submitted by the executor).
"""

from __future__ import annotations

import hashlib
import os
import shlex
import sys

from ablate.sweep.spec import SlurmConfig, SweepSpec, sbatch_option


def job_name(run_dir: str, point: str) -> str:
    """Unique per run directory, readable in squeue: ``<point>.<hash of the run dir>``."""
    return f"{point}.{hashlib.sha1(os.path.abspath(run_dir).encode()).hexdigest()[:8]}"


def _header(
    cfg: SlurmConfig, name: str, log: str, cwd: str, tasks_per_node: bool = True
) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={name}", f"#SBATCH --nodes={cfg.nodes}"]
    if tasks_per_node:
        lines.append("#SBATCH --ntasks-per-node=1")
    if cfg.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={cfg.gpus_per_node}")
    for opt, value in (
        ("cpus-per-task", cfg.cpus_per_task),
        ("mem", cfg.mem),
        ("partition", cfg.partition),
        ("account", cfg.account),
        ("time", cfg.time),
    ):
        if value is not None:
            lines.append(f"#SBATCH --{opt}={value}")
    lines += [f"#SBATCH --output={log}", "#SBATCH --open-mode=append", f"#SBATCH --chdir={cwd}"]
    return lines


def _environment(cfg: SlurmConfig, python: str, run_dir: str) -> list[str]:
    lines = [""] + [f"export {k}={shlex.quote(str(v))}" for k, v in cfg.env.items()]
    lines += list(cfg.setup)  # before `set -u`: environment scripts often read unset variables
    lines += [
        "set -uo pipefail",
        f"PYTHON={shlex.quote(python)}",
        f"RUN_DIR={shlex.quote(run_dir)}",
    ]
    return lines


def train_script(spec: SweepSpec, run_dir: str, point: str, cwd: str | None = None) -> str:
    cfg = spec.slurm
    python = cfg.python or sys.executable
    cwd = cwd or os.getcwd()
    lines = _header(
        cfg, job_name(run_dir, point), os.path.join(run_dir, "slurm", "train-%j.out"), cwd
    )
    lines += [f"#SBATCH --signal=USR1@{cfg.signal_seconds}", "#SBATCH --requeue"]
    lines += [f"#SBATCH {sbatch_option(x)}" for x in cfg.extra]
    lines.insert(
        1,
        f"# ablate sweep {spec.name}, point {point}: {cfg.nodes} node(s) x {cfg.procs_per_node} "
        "training process(es). Rendered by `ablate sweep submit`.",
    )
    lines += _environment(cfg, python, run_dir)
    port = str(cfg.port) if cfg.port else "$((20000 + SLURM_JOB_ID % 20000))"
    lines += [
        "",
        "# the first node of the allocation hosts the c10d rendezvous",
        'export RDZV_HOST=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        f"export RDZV_PORT={port}",
        "export PYTHON RUN_DIR",
        'echo "ablate: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) on '
        "$SLURM_JOB_NODELIST,"
        ' rendezvous $RDZV_HOST:$RDZV_PORT, $(date -u +%FT%TZ)"',
        "",
        "# one task per node, each running torchrun; it ignores USR1 so that only the training",
        "# processes (which handle it: checkpoint, exit 'preempted') act on Slurm's --signal",
        'srun --nodes="$SLURM_NNODES" --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c \'trap "" '
        'USR1; exec "$PYTHON" -m torch.distributed.run \\',
        '    --nnodes="$SLURM_NNODES" --node-rank="$SLURM_NODEID" --nproc-per-node='
        + str(cfg.procs_per_node)
        + " \\",
        '    --rdzv-backend=c10d --rdzv-endpoint="$RDZV_HOST:$RDZV_PORT" --rdzv-id="$SLURM_JOB_ID" '
        "\\",
        '    -m ablate.cli train "$RUN_DIR/recipe.yaml" --resume auto\'',
        "rc=$?",
        'state=$("$PYTHON" -c \'import json, sys; print(json.load(open(sys.argv[1])).get("state", '
        '""))\' '
        '"$RUN_DIR/status.json" 2>/dev/null)',
        "echo \"ablate: training exited $rc, status '$state', $(date -u +%FT%TZ)\"",
        'if [ "$state" = preempted ]; then',
        "  # checkpointed on USR1 (time limit near, or asked): back in the queue; resumes from it",
        '  scontrol requeue "$SLURM_JOB_ID"',
        "  exit 0",
        "fi",
        "exit $rc",
        "",
    ]
    return "\n".join(lines)


def eval_command(spec: SweepSpec, run_dir: str) -> list[str]:
    ev = spec.eval
    cmd = ["-m", "ablate.cli", "eval", run_dir, "--tasks", ",".join(ev.tasks)]
    if ev.step is not None:
        cmd += ["--step", str(ev.step)]
    return cmd + [str(a) for a in ev.args]


def eval_script(spec: SweepSpec, run_dir: str, point: str, cwd: str | None = None) -> str:
    cfg = spec.slurm_for_eval()
    python = cfg.python or sys.executable
    cwd = cwd or os.getcwd()
    lines = _header(
        cfg, job_name(run_dir, point) + ".eval", os.path.join(run_dir, "slurm", "eval-%j.out"), cwd
    )
    lines += [f"#SBATCH {sbatch_option(x)}" for x in cfg.extra]
    lines.insert(
        1,
        f"# ablate sweep {spec.name}, point {point}: eval after training "
        "(submitted with --dependency=afterok:<training job>).",
    )
    lines += _environment(cfg, python, run_dir)
    args = " ".join(shlex.quote(a) for a in eval_command(spec, run_dir)[1:])
    lines += ["", f'srun --nodes=1 --ntasks=1 "$PYTHON" -m {args}', ""]
    return "\n".join(lines)
