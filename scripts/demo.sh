#!/usr/bin/env bash
# The main job end to end on a fresh machine: install what is missing, build cutover, start local
# PostgreSQL and MongoDB, load the sample immunization registry, migrate it, print the report.
#   scripts/demo.sh [--patients N]      (default 2000)
# The servers keep running afterwards so you can look around; stop them with
# `scripts/services.sh stop`.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PATIENTS=2000
while [ $# -gt 0 ]; do
  case "$1" in
    --patients) PATIENTS="$2"; shift 2 ;;
    *) echo "demo: unknown argument $1" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
echo "== building cutover"
# --workspace: the Appwrite stand-in too, which services.sh starts when it is built.
cargo build --release --quiet --workspace
CUTOVER="${CARGO_TARGET_DIR:-$ROOT/target}/release/cutover"

scripts/services.sh start
eval "$(scripts/services.sh env)"
export CUTOVER_MONGODB_DATABASE="${CUTOVER_MONGODB_DATABASE:-registry}"
# The files stage reads the sample files fixtures.sh writes (documents → GridFS).
export CUTOVER_FILES_ROOT="${CUTOVER_FILES_ROOT:-$ROOT/fixtures/files}"

echo "== loading the sample registry ($PATIENTS patients)"
scripts/fixtures.sh --patients "$PATIENTS"

echo "== the plan"
"$CUTOVER" plan

echo "== cutover migrate (into MongoDB database $CUTOVER_MONGODB_DATABASE)"
set +e
# --rerun: the demo copies everything each time, even when a previous demo already did.
"$CUTOVER" migrate --rerun
status=$?
set -e
case $status in
  0) echo "demo: every row was written" ;;
  2) echo "demo: finished; the deliberately bad rows are in the rejects file above (see fixtures/README.md)" ;;
  *) echo "demo: cutover migrate failed (exit $status)" >&2; exit "$status" ;;
esac

echo "== cutover verify"
"$CUTOVER" verify
"$CUTOVER" report --format html -o reports/signoff.html
echo "demo: the sign-off report is reports/signoff.html"
echo "demo: the files of documents are in the GridFS bucket documents (documents.files, documents.chunks)"
echo "demo: the same into Appwrite (the local stand-in; files into its Storage): eval \"\$(scripts/services.sh env)\"; $CUTOVER migrate --target appwrite --files-root fixtures/files"
echo "demo: the servers are still running; stop them with scripts/services.sh stop"
