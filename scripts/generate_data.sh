#!/usr/bin/env bash
# Make generated training data: -g asks the LLM server (make generate), -a runs offline
# augmentation (make augment). Both rebuild data/generated/$COMP/generated_train.csv.
# Everything else passes through to make, e.g.:
#   scripts/generate_data.sh -a COMP=math-subjects
#   OPENAI_BASE_URL=http://gpu-box:8000/v1 scripts/generate_data.sh -g -a COMP=demo
set -euo pipefail

usage() {
  cat <<'USAGE'
usage: scripts/generate_data.sh [-g] [-a] [VAR=value ...]
  -g   make generate: new rows from the OpenAI-compatible server at OPENAI_BASE_URL
       (default http://localhost:8000/v1; key from OPENAI_API_KEY); needs `make baseline` first
  -a   make augment: nlpaug copies of rare-class rows (offline; configs/augment.yaml)
  -h   this help
VAR=value arguments (COMP=…, …) and the environment pass through to make.
USAGE
}

targets=()
while getopts ":gah" opt; do
  case "$opt" in
    g) targets+=(generate) ;;
    a) targets+=(augment) ;;
    h) usage; exit 0 ;;
    *) echo "error: unknown option -$OPTARG" >&2; usage >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
if [ ${#targets[@]} -eq 0 ]; then
  usage
  exit 2
fi
for arg in "$@"; do
  case "$arg" in
    *=*) ;;
    *) echo "error: expected VAR=value, got '$arg'" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
# One after the other: each rebuilds generated_train.csv from the parts that exist.
for target in "${targets[@]}"; do
  make "$target" "$@"
done
