#!/bin/bash
#SBATCH --job-name=daskcal-driver
#SBATCH --time=02:00:00
#SBATCH --cpus-per-task=1
#SBATCH --mem=4G
# Runs the driver in a small job; the workers are separate SLURM jobs started by dask-jobqueue
# (configuration in deploy/jobqueue.yaml).
set -euo pipefail
export DASK_CONFIG=${DASK_CONFIG:-$(dirname "$0")}
daskcal run detector1 "$1" "$2" --cluster slurm --workers "${WORKERS:-4}"
