#!/bin/bash
#SBATCH --job-name=daskcal-detector1
#SBATCH --time=02:00:00
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
#SBATCH --output=daskcal-detector1-%j.log
# The detector1 driver in a small SLURM job; its Dask workers are separate SLURM jobs that it submits
# through dask-jobqueue (resources in jobqueue.yaml, beside this script) and cancels at the end
# (the common part is slurm-run.sh, beside this script).
#
#   sbatch /path/to/deploy/slurm-detector1.sh ramps.zarr [more.zarr ...] out/ [more daskcal detector1 options]
#   (killed at its walltime: resubmit the same command with --resume to do only what is not done)
#
# Works from any folder: relative paths are taken from the folder you submit from, and the
# configuration from this script's folder unless DASK_CONFIG is set. Environment:
#   WORKERS=N        worker jobs (default 2)      ADAPT="MIN MAX"  adaptive, instead of WORKERS
#   WAIT_WORKERS=S   seconds for the first worker job to start (default 300)
# The driver's log is daskcal-detector1-<jobid>.log in the submitting folder. `scancel` of this job
# cancels its worker jobs too. Activate daskcal's Python environment before sbatch: the job inherits it.
set -euo pipefail
if [ $# -lt 2 ]; then
    echo "usage: sbatch slurm-detector1.sh RAMPS.zarr... OUT/ [daskcal detector1 options]" >&2
    exit 2
fi
here=$(dirname "${BASH_SOURCE[0]}")
if [ -n "${SLURM_JOB_ID:-}" ]; then
    # under sbatch this script runs from slurmd's spool copy: ask SLURM where it was submitted from
    submitted=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p')
    [ -n "$submitted" ] && here=$(dirname "$submitted")
fi
exec bash "$here/slurm-run.sh" detector1 "$@"
