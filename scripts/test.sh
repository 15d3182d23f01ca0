#!/usr/bin/env bash
# The whole test suite on a fresh machine: install what is missing, start throwaway PostgreSQL and
# mongod servers (own ports, own directory), check formatting and lints, run every test, stop the
# servers. The exit status tells the truth.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/setup.sh

# Servers of our own, on ports apart from the demo's (and below Linux's ephemeral range, where
# the suite's own connections take their local ports), in a directory removed at the end.
export CUTOVER_SERVICES_DIR="$(mktemp -d /tmp/cutover-test.XXXXXX)"
export CUTOVER_PG_PORT="${CUTOVER_TEST_PG_PORT:-25432}"
export CUTOVER_MONGO_PORT="${CUTOVER_TEST_MONGO_PORT:-27217}"
export CUTOVER_APPWRITE_PORT="${CUTOVER_TEST_APPWRITE_PORT:-28180}"
cleanup() {
  scripts/services.sh stop || true
  rm -rf "$CUTOVER_SERVICES_DIR"
}
trap cleanup EXIT

# The stand-in is a package of its own: build it so services.sh starts it.
cargo build --quiet -p appwrite-standin
scripts/services.sh start
eval "$(scripts/services.sh env)"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"
# --workspace: the stand-in's own unit tests too (a plain `cargo test` tests the root package only).
cargo test --workspace --all-targets 2>&1 | tee "$CUTOVER_SERVICES_DIR/test.log"
status=${PIPESTATUS[0]}
passed=$(grep -Eo '[0-9]+ passed' "$CUTOVER_SERVICES_DIR/test.log" | awk '{s+=$1} END {print s+0}')
failed=$(grep -Eo '[0-9]+ failed' "$CUTOVER_SERVICES_DIR/test.log" | awk '{s+=$1} END {print s+0}')
echo "tests: $passed passed, $failed failed"
exit "$status"
