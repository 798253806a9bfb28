#!/usr/bin/env bash
# The lent GPU machine's one command (benchmarks/gpu/README.md): installs the kit offline,
# runs the four parts within their time budgets, writes results.{md,json} and kit_run.log
# to $OUT. Arguments go to kit_run.py (e.g. --parts dice,predict --nnunet-compile off).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu/kit_run.py "$@"
