#!/bin/bash
# Rendered by `vla launch backend=slurm` ({{job_name}}). One task per node; each task runs one
# torchrun that starts {{gpus_per_node}} trainer process(es); all nodes meet at the first node.
#
# Time limit / preemption: SLURM sends SIGUSR1 to this batch shell {{signal_seconds}} s before the
# limit (--signal=B:USR1@...) and SIGTERM on preemption. The trap forwards SIGUSR1 through srun to
# every node's trainer processes (the trainer checkpoints on SIGUSR1 and exits; it may see the
# signal twice), waits up to {{grace_seconds}} s for them, then requeues the job; the requeued job
# resumes from the latest committed checkpoint in RUN_DIR (resume=auto). torchrun itself runs with
# SIGUSR1 ignored so that it keeps supervising the trainers while they save.
#SBATCH --job-name={{job_name}}
#SBATCH --nodes={{nodes}}
#SBATCH --ntasks-per-node=1
{{sbatch_lines}}
#SBATCH --time={{time}}
#SBATCH --signal=B:USR1@{{signal_seconds}}
#SBATCH --open-mode=append
#SBATCH --output={{log_dir}}/%x-%j.out
set -uo pipefail

{{setup}}
export PYTHONUNBUFFERED=1
RUN_DIR={{run_dir}}
GPUS_PER_NODE={{gpus_per_node}}
REQUEUE_ON_SIGNAL={{requeue}}

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD_NODE=${NODES[0]}
RDZV_ENDPOINT="$HEAD_NODE:{{port}}"
echo "[launch] job $SLURM_JOB_ID restart ${SLURM_RESTART_COUNT:-0}: ${#NODES[@]} node(s), rendezvous $RDZV_ENDPOINT, run_dir $RUN_DIR"

# Per-node task: torchrun in the background with SIGUSR1 ignored (it would die of it; the trainer
# installs its own handler); SIGUSR1 reaching this task is passed on to the trainer processes.
read -r -d '' NODE_TASK <<'NODE_EOF' || true
trap '' USR1
{{python}} -m torch.distributed.run \
  --nnodes "$SLURM_NNODES" --nproc-per-node "$GPUS_PER_NODE" \
  --rdzv-backend c10d --rdzv-endpoint "$RDZV_ENDPOINT" --rdzv-id "$SLURM_JOB_ID" \
  --node-rank "$SLURM_NODEID" \
  -m {{train_module}} {{train_args}} &
TORCHRUN_PID=$!
forward_usr1() {
  echo "[launch] node $SLURM_NODEID: SIGUSR1 -> trainer processes of torchrun $TORCHRUN_PID"
  pkill -USR1 -P "$TORCHRUN_PID" || true
}
trap forward_usr1 USR1
# `wait` returns early (>128) when the trap runs: wait again until torchrun is gone, then collect
# its real exit status.
while kill -0 "$TORCHRUN_PID" 2>/dev/null; do wait "$TORCHRUN_PID"; done
wait "$TORCHRUN_PID"
exit $?
NODE_EOF
export RDZV_ENDPOINT GPUS_PER_NODE NODE_TASK

SIGNALLED=0
GIVE_UP_AT=0
on_signal() {
  echo "[launch] $1: asking trainers to checkpoint (SIGUSR1 via srun), waiting up to {{grace_seconds}} s"
  if [[ "$SIGNALLED" == 0 ]]; then GIVE_UP_AT=$((SECONDS + {{grace_seconds}})); fi
  SIGNALLED=1
  if [[ -n "${SRUN_PID:-}" ]]; then kill -USR1 "$SRUN_PID" 2>/dev/null || true; fi
}
trap 'on_signal SIGUSR1' USR1
trap 'on_signal SIGTERM' TERM

srun --kill-on-bad-exit=1 --ntasks-per-node=1 bash -c "$NODE_TASK" &
SRUN_PID=$!
RC=0
while kill -0 "$SRUN_PID" 2>/dev/null; do
  if [[ "$SIGNALLED" == 1 && "$SECONDS" -ge "$GIVE_UP_AT" ]]; then
    echo "[launch] trainers still running {{grace_seconds}} s after the signal (no SIGUSR1 handler?)"
    RC=124  # not waited for: scontrol requeue below stops the step
    break
  fi
  sleep 1 & wait $!  # short waits: the traps run between them
done
if [[ "$RC" == 0 ]]; then
  wait "$SRUN_PID"
  RC=$?
fi
echo "[launch] srun finished with $RC"

if [[ "$SIGNALLED" == 1 && "$REQUEUE_ON_SIGNAL" == 1 ]]; then
  echo "[launch] requeueing job $SLURM_JOB_ID (resumes from $RUN_DIR)"
  scontrol requeue "$SLURM_JOB_ID" || echo "[launch] scontrol requeue failed (already requeued by preemption?)"
  exit 0
fi
exit "$RC"
