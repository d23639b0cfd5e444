#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every worker (host) of the slice at once, through
# `gcloud compute tpus tpu-vm ssh --worker=all`. Each worker starts one process; jax.distributed finds the
# other workers by itself on Cloud TPU (distributed.initialize=auto detects the TPU VM), so no address,
# process count or id is given. The run prints its mesh, process count and per-device batch at start.
#
# Usage:
#   experiments/launch/tpu_pod.sh --tpu NAME --zone ZONE --workdir DIR [options] [-- --config.key=value ...]
#
# Options:
#   --tpu NAME         the TPU VM (pod slice) name                                       (required)
#   --zone ZONE        its zone, e.g. us-central2-b                                      (required)
#   --workdir DIR      absolute run directory, the SAME shared path on every worker      (required)
#                      (a Filestore/NFS or gcsfuse mount: every process writes its checkpoint shards there)
#   --config FILE      config file, relative to --repo or absolute     (default configs/quickstart.py)
#   --project ID       gcloud project                                  (default: gcloud's current project)
#   --repo DIR         the imagen-jax checkout on the workers          (default ~/imagen-jax)
#   --python EXE       the Python with imagen-jax installed there      (default python3)
#   --dry-run          print the gcloud command instead of running it
#   -- ...             everything after -- is passed on to imagen_jax.main (e.g. --config.mesh.fsdp=-1)
#
# Example (a v4-32 slice: 4 workers x 4 chips, fully sharded parameters, a larger batch):
#   experiments/launch/tpu_pod.sh --tpu my-v4-32 --zone us-central2-b --workdir /mnt/shared/imagen_qs \
#       -- --config.mesh.data=1 --config.mesh.fsdp=-1 --config.train.batch_size=256
#
# Preemption: a preempted worker gets SIGTERM; all processes agree on a step, save it and exit 0. Run the same
# command again to resume from the last complete checkpoint.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; }
die() { echo "error: $*" >&2; echo "(run with --help for the options)" >&2; exit 2; }

tpu="" zone="" workdir="" config="configs/quickstart.py" project="" repo="~/imagen-jax" python="python3"
dry_run=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tpu) tpu="${2-}"; shift 2 || die "--tpu needs a value" ;;
    --zone) zone="${2-}"; shift 2 || die "--zone needs a value" ;;
    --workdir) workdir="${2-}"; shift 2 || die "--workdir needs a value" ;;
    --config) config="${2-}"; shift 2 || die "--config needs a value" ;;
    --project) project="${2-}"; shift 2 || die "--project needs a value" ;;
    --repo) repo="${2-}"; shift 2 || die "--repo needs a value" ;;
    --python) python="${2-}"; shift 2 || die "--python needs a value" ;;
    --dry-run) dry_run=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) die "unknown option '$1'; flags for the run go after --, e.g. -- --config.train.steps=1000" ;;
  esac
done

[[ -n "$tpu" ]] || die "--tpu NAME is required (the pod slice's TPU VM name, see 'gcloud compute tpus tpu-vm list')"
[[ -n "$zone" ]] || die "--zone ZONE is required (e.g. us-central2-b)"
[[ -n "$workdir" ]] || die "--workdir DIR is required: an absolute path on a file system shared by all workers"
[[ "$workdir" == /* ]] || die "--workdir '$workdir' must be absolute, the same path on every worker"
[[ "$config" == *.py || "$config" == *.py:* ]] || die "--config '$config' must be a .py config file (optionally :variant)"
for arg in "$@"; do
  [[ "$arg" == --* ]] || die "run flag '$arg' must look like --config.key=value or --prompt=..."
  [[ "$arg" != --workdir* && "$arg" != --config=* && "$arg" != "--config" ]] \
    || die "give --workdir and --config as options of this script, not after --"
done

quote() { printf '%q ' "$@"; }
remote="cd $repo && $(quote "$python" -m imagen_jax.main --config "$config" --workdir "$workdir" "$@")"
command=(gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command "$remote")
[[ -z "$project" ]] || command+=(--project "$project")

if [[ $dry_run -eq 1 ]]; then
  quote "${command[@]}"
  echo
  exit 0
fi
command -v gcloud >/dev/null || die "gcloud is not installed here (https://cloud.google.com/sdk); --dry-run prints the command"
exec "${command[@]}"
