#!/usr/bin/env bash
# Training on every worker of a Cloud TPU VM slice (e.g. v4-32: 4 workers x 4 chips).
# `jax.distributed.initialize()` finds the workers and the coordinator itself.
#
#   launch/tpu_pod.sh TPU_NAME ZONE --config configs/X.py --workdir gs://bucket/runs/X [--config.a.b=v ...]
#
# Every worker needs the same checkout of this repository at LCMSM_REMOTE_DIR (default
# ~/lcmsm-jax) with `pip install -e .` done in LCMSM_REMOTE_VENV (default
# ~/lcmsm-jax/.venv); the workdir must be visible to all workers (a GCS bucket or a
# shared file system). Output of every worker streams back here; the command returns when
# all workers are done. Extra gcloud flags (a project): LCMSM_GCLOUD_FLAGS.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  echo "usage: $0 TPU_NAME ZONE --config CONFIG.py --workdir DIR [--config.a.b=v ...]" >&2
  exit 2
fi
tpu=$1
zone=$2
shift 2
remote_dir=${LCMSM_REMOTE_DIR:-'~/lcmsm-jax'}
remote_venv=${LCMSM_REMOTE_VENV:-"$remote_dir/.venv"}
read -r -a gcloud_flags <<<"${LCMSM_GCLOUD_FLAGS:-}"

# The arguments, quoted for the remote shell.
args=$(printf '%q ' "$@")
command="cd $remote_dir && source $remote_venv/bin/activate && lcmsm-train $args--config.mesh.cluster=tpu"

gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all "${gcloud_flags[@]}" \
  --command="$command"
