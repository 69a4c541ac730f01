#!/usr/bin/env bash
# Evaluate finished runs: confusion matrices and results/<comp>/leaderboard.md (`make evaluate`).
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: scripts/evaluate_models.sh [COMP=<competition>] [RUNS="run1 run2 …"] [other make variables]

Runs `make evaluate` with the given arguments passed through unchanged. Writes
images/<comp>/confusion_<run>.png and results/<comp>/leaderboard.md.

Examples:
  scripts/evaluate_models.sh
  scripts/evaluate_models.sh COMP=math-subjects RUNS="tfidf minilm"

Options:
  -h, --help   show this help and exit
USAGE
}

for arg in "$@"; do
  case "$arg" in
    -h|--help) usage; exit 0 ;;
  esac
done

cd "$(dirname "$0")/.."
exec make evaluate "$@"
