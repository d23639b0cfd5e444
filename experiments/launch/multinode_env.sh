#!/usr/bin/env bash
# Start one process of a multi-node run by hand (any cluster without SLURM or Cloud TPU: plain SSH, Kubernetes
# pods, cloud VMs): run this once on every node, each with its own PROCESS_ID. It exports the environment
# variables that jax.distributed reads through parallel.initialize_distributed
#   JAX_COORDINATOR_ADDRESS=host:port of process 0, JAX_NUM_PROCESSES, JAX_PROCESS_ID
# and starts the trainer; each process uses all accelerators of its node. The run prints its mesh, process
# count and per-device batch at start. (The same values can instead be given as --config.distributed.* flags.)
#
# Usage:
#   experiments/launch/multinode_env.sh COORDINATOR_HOST:PORT NUM_PROCESSES PROCESS_ID CONFIG WORKDIR [--config.key=value ...]
#
#   COORDINATOR_HOST:PORT  an address of the node running process 0 that every node can reach, and a free port
#   NUM_PROCESSES          how many processes (nodes) take part, >= 1
#   PROCESS_ID             this process's number, 0 .. NUM_PROCESSES-1 (0 runs the coordinator)
#   CONFIG                 the config file, e.g. configs/quickstart.py
#   WORKDIR                the run directory: the same path on a file system every node shares (NFS, Lustre)
#   PYTHON (environment)   the Python with imagen-jax installed (default python3)
#
# Example, two GPU nodes (node-a is process 0):
#   node-a$ experiments/launch/multinode_env.sh node-a:8476 2 0 configs/quickstart.py /shared/qs --config.mesh.fsdp=-1 --config.mesh.data=1
#   node-b$ experiments/launch/multinode_env.sh node-a:8476 2 1 configs/quickstart.py /shared/qs --config.mesh.fsdp=-1 --config.mesh.data=1
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }
die() { echo "error: $*" >&2; echo "(run with --help for the usage)" >&2; exit 2; }

[[ "${1-}" == "-h" || "${1-}" == "--help" ]] && { usage; exit 0; }
[[ $# -ge 5 ]] || die "expected COORDINATOR_HOST:PORT NUM_PROCESSES PROCESS_ID CONFIG WORKDIR, got $# argument(s)"
address="$1" num_processes="$2" process_id="$3" config="$4" workdir="$5"
shift 5

[[ "$address" =~ ^[^:[:space:]]+:[0-9]+$ ]] || die "coordinator address '$address' must be host:port, e.g. node-a:8476"
port="${address##*:}"
(( port >= 1 && port <= 65535 )) || die "port $port in '$address' must be in 1..65535"
[[ "$num_processes" =~ ^[0-9]+$ ]] && (( num_processes >= 1 )) \
  || die "NUM_PROCESSES '$num_processes' must be an integer >= 1"
[[ "$process_id" =~ ^[0-9]+$ ]] && (( process_id < num_processes )) \
  || die "PROCESS_ID '$process_id' must be an integer in 0..$((num_processes - 1))"
[[ -f "${config%%:*}" ]] || die "config file '${config%%:*}' does not exist here"
[[ -n "$workdir" ]] || die "WORKDIR is empty"
for arg in "$@"; do
  [[ "$arg" == --* ]] || die "extra argument '$arg' must look like --config.key=value or --prompt=..."
done

export JAX_COORDINATOR_ADDRESS="$address" JAX_NUM_PROCESSES="$num_processes" JAX_PROCESS_ID="$process_id"
exec "${PYTHON:-python3}" -m imagen_jax.main --config "$config" --workdir "$workdir" "$@"
