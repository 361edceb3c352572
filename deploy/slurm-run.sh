#!/bin/bash
# What the slurm-<command>.sh batch scripts run, inside their allocation:
#   slurm-run.sh COMMAND PATHS... [daskcal COMMAND options]
# runs `daskcal COMMAND PATHS... --cluster slurm` with the workers asked for in the environment
# (WORKERS=N, default 2; or ADAPT="MIN MAX"; WAIT_WORKERS=S, default 300) and the Dask
# configuration beside this script (jobqueue.yaml) unless DASK_CONFIG is set. The options given
# come last, so they win over these defaults.
set -euo pipefail
command=$1
shift
export DASK_CONFIG=${DASK_CONFIG:-$(dirname "${BASH_SOURCE[0]}")}
if [ ! -e "$DASK_CONFIG" ]; then
    echo "slurm-$command.sh: no Dask configuration at DASK_CONFIG=$DASK_CONFIG (a folder with jobqueue.yaml)" >&2
    exit 2
fi
scale=(--workers "${WORKERS:-2}")
[ -n "${ADAPT:-}" ] && read -r -a scale <<< "--adapt $ADAPT"
paths=()  # the inputs and OUT: the arguments before the first option
while [ $# -gt 0 ] && [[ "$1" != -* ]]; do paths+=("$1"); shift; done
exec daskcal "$command" "${paths[@]}" --cluster slurm "${scale[@]}" --wait-workers "${WAIT_WORKERS:-300}" "$@"
