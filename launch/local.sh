#!/usr/bin/env bash
# N processes of one run on this machine, on CPU devices (JAX's multi-process runtime, gloo
# collectives): the multi-host code path, testable without a cluster.
#
#   launch/local.sh N --config configs/X.py --workdir runs/X [--config.a.b=v ...]
#
# Each process gets LCMSM_LOCAL_DEVICES CPU devices (default 2) and the same arguments;
# LCMSM_COMMAND picks the command (default lcmsm-train; lcmsm-eval works the same way).
# Process 0 coordinates on localhost:LCMSM_PORT (default: a free port). Ctrl-C / SIGTERM is
# passed to every process (they checkpoint one common step and stop); if one process fails
# the others are stopped. Exits with the first non-zero status of a process, else 0.
set -euo pipefail

usage() {
  echo "usage: $0 N --config CONFIG.py --workdir DIR [--config.a.b=v ...]" >&2
  exit 2
}

[[ $# -ge 1 && $1 =~ ^[1-9][0-9]*$ ]] || usage
count=$1
shift
command=${LCMSM_COMMAND:-lcmsm-train}
devices=${LCMSM_LOCAL_DEVICES:-2}
[[ $devices =~ ^[1-9][0-9]*$ ]] || {
  echo "$0: LCMSM_LOCAL_DEVICES=$devices: expected a positive integer" >&2
  exit 2
}
command -v "$command" >/dev/null || {
  echo "$0: $command not found; activate the environment lcmsm-jax is installed in" >&2
  exit 2
}
if [[ -z ${LCMSM_PORT:-} ]]; then
  # A port the OS just handed out and released: free unless something takes it meanwhile.
  LCMSM_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
fi

export JAX_PLATFORMS=cpu
export XLA_FLAGS="${XLA_FLAGS:-} --xla_force_host_platform_device_count=$devices"
export LCMSM_COORDINATOR="localhost:$LCMSM_PORT" LCMSM_NUM_PROCESSES=$count
unset LCMSM_PROCESS_ID

pids=()
for ((i = 0; i < count; i++)); do
  LCMSM_PROCESS_ID=$i "$command" "$@" &
  pids+=("$!")
done

stop_all() {
  ((${#pids[@]} == 0)) || kill -TERM "${pids[@]}" 2>/dev/null || true
}
trap stop_all INT TERM

status=0
while ((${#pids[@]} > 0)); do
  finished=""
  code=0
  wait -n -p finished "${pids[@]}" || code=$?
  [[ -n ${finished:-} ]] || continue # a signal interrupted the wait; the trap passed it on
  for index in "${!pids[@]}"; do # wait only for the ones still running
    [[ ${pids[index]} != "$finished" ]] || unset "pids[index]"
  done
  if ((code != 0 && status == 0)); then
    status=$code
    echo "$0: process with pid $finished exited with status $code; stopping the others" >&2
    stop_all
  fi
done
exit "$status"
