#!/usr/bin/env bash
# Throughput and memory of `cutover migrate` on this machine, side by side with mongod's write
# ceiling and with the programs a user might pick instead.
#   scripts/bench.sh [--patients N] [--quick] [--peers-only] [--no-peers] [--files-only]
# Loads N patients (default 1,000,000, or $PATIENTS; ~3N immunizations) once into the database
# cutover_bench (reused while its row count matches), then times, with peak RSS from /usr/bin/time -v
# and the CPU seconds of the client, PostgreSQL and mongod (from /proc) for each run:
#   1. patients (guardians embedded) into an empty collection   (insert path)
#   2. the same again into the full collection                  (upsert path)
#   3. patients without the guardians embed                     (insert path)
#   4. immunizations into an empty collection                   (insert path)
#      and `verify --full` of what 1 wrote (its rate as a ratio to the run's)
#   5. the documents of 1, 3 and 4 re-inserted by mongo-ceiling: mongod plus cutover's own writer
#      (MongoTarget::write) with nothing to read or map — where cutover's time goes, NOT an
#      independent ceiling (it speeds up with the writer it measures; 6 has that one)
#   6. side by side (the peers of ../shared/peers, or CUTOVER_PEERS_DIR, relative paths from the
#      project root; skipped with a message when absent): cutover, the peers' own write ceiling (a
#      separate Rust program that pre-builds every document and command, then times only the
#      writes), a Node.js and a Python peer, on the same rows, ROUNDS interleaved rounds (default 3;
#      CONTENDERS picks a subset), every run checked to write the same documents; cutover's ratios
#      to each. The peers run from a copy (shared/ may be
#      read-only) under CUTOVER_PEERS_WORK (default ~/.cache/cutover/peers), which keeps their
#      node_modules and the ceiling's build; results under its results/. Needs node (20+) and npm.
#   7. Appwrite stand-in: the writer's bulk upserts vs single-row writes for 50,000 patients
#   8. `cutover migrate --target appwrite` into the stand-in, --bulk-rows 100 vs 1 (50,000 patients)
#   9. the files stage: MB/s into GridFS and into the stand-in, with the client's peak RSS, for the
#      20 sample files of scripts/fixtures.sh and for generated files (1 GiB; the size in GiB
#      from CUTOVER_BENCH_FILES_GIB, 0 to skip them) — the peak RSS must not grow with the bytes
#   scripts/bench.sh --files-only runs 9 alone (no patients loaded); --peers-only runs 6 alone;
#   --no-peers leaves 6 out.
# Servers: scripts/services.sh (started if needed, left running).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PATIENTS="${PATIENTS:-1000000}"
FILES_ONLY=0
PEERS=1       # 0: leave section 6 out; 2: run it alone
FILES_GIB="${CUTOVER_BENCH_FILES_GIB:-1}"
PEERS_SRC="${CUTOVER_PEERS_DIR:-../shared/peers}"
PEERS_WORK="${CUTOVER_PEERS_WORK:-${CUTOVER_CACHE_DIR:-$HOME/.cache/cutover}/peers}"
while [ $# -gt 0 ]; do
  case "$1" in
    --patients) PATIENTS="$2"; shift 2 ;;
    --quick) PATIENTS=100000; shift ;;
    --files-only) FILES_ONLY=1; shift ;;
    --peers-only) PEERS=2; shift ;;
    --no-peers) PEERS=0; shift ;;
    *) echo "bench: unknown argument $1" >&2; exit 2 ;;
  esac
done

scripts/setup.sh
command -v /usr/bin/time >/dev/null || { apt-get update -qq && apt-get install -y -qq time >/dev/null; }
# The stand-in is a workspace package; appwrite-bench an example (it runs the stand-in in-process).
cargo build --release --quiet --workspace --bins --example appwrite-bench
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release"

scripts/services.sh start
eval "$(scripts/services.sh env)"
ADMIN_URL="$CUTOVER_SOURCE_URL"
BENCH_URL="${ADMIN_URL%/*}/cutover_bench"

have=$(psql "$BENCH_URL" -Atc "SELECT count(*) FROM patients" 2>/dev/null || echo 0)
if [ "$FILES_ONLY" = 0 ] && [ "$have" != "$PATIENTS" ]; then
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS cutover_bench" -qc "CREATE DATABASE cutover_bench"
  CUTOVER_SOURCE_URL="$BENCH_URL" scripts/fixtures.sh --patients "$PATIENTS" --no-files
fi
export CUTOVER_SOURCE_URL="$BENCH_URL"
FILES_URL="${ADMIN_URL%/*}/cutover_bench_files"

WORK="$(mktemp -d /tmp/cutover-bench.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
# A mappings copy whose patients mapping does not embed guardians.
cp -r mappings "$WORK/mappings-flat"
python3 - "$WORK/mappings-flat/patients.toml" <<'PY'
import re, sys
p = sys.argv[1]
text = open(p).read()
text = re.sub(r"\n\[\[embed\]\].*?(?=\n\[\[field\]\]|\n\[\[rule\]\]|\Z)", "\n", text, flags=re.S)
text = re.sub(r"\n\[\[embed\.field\]\].*?(?=\n\[\[field\]\]|\n\[\[embed|\n\[\[rule\]\]|\Z)", "\n", text, flags=re.S)
open(p, "w").write(text)
PY

# CPU seconds (user + system) a server has spent so far, from /proc: mongod's own (one process,
# many threads); PostgreSQL's postmaster with its reaped children (every backend that has ended,
# i.e. each run's sessions once cutover has exited).
SERVICES_DIR="${CUTOVER_SERVICES_DIR:-/tmp/cutover-services}"
PG_PID=$(head -1 "$SERVICES_DIR/pg/data/postmaster.pid")
MONGO_PID=$(cat "$SERVICES_DIR/mongo/mongod.pid")
cpu_s() { # pid with-children(0|1)
  awk -v tck="$(getconf CLK_TCK)" -v kids="$2" \
    '{ s = $14 + $15; if (kids) s += $16 + $17; printf "%.2f\n", s / tck }' "/proc/$1/stat"
}
servers_cpu() { echo "$(cpu_s "$PG_PID" 1) $(cpu_s "$MONGO_PID" 0)"; }

run() { # name database extra-args...
  local name="$1" db="$2"; shift 2
  local before after
  before=$(servers_cpu)
  /usr/bin/time -v "$BIN/cutover" migrate --quiet --ignore-dependencies --rerun --no-backup --database "$db" \
    --report "$WORK/$name.json" "$@" >"$WORK/$name.out" 2>"$WORK/$name.time" || [ $? -eq 2 ]
  sleep 0.5 # the run's backends have ended; their CPU is the postmaster's children's now
  after=$(servers_cpu)
  python3 - "$name" "$WORK/$name.json" "$WORK/$name.time" "$before" "$after" <<'PY'
import json, re, sys
name, report, timing, before, after = sys.argv[1:6]
r = json.load(open(report))
e = r["entities"][0]
t = open(timing).read()
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
cpu = float(re.search(r"User time \(seconds\): ([\d.]+)", t).group(1)) + float(re.search(r"System time \(seconds\): ([\d.]+)", t).group(1))
pg, mongo = (float(a) - float(b) for a, b in zip(after.split(), before.split()))
print(f"{name:<28} {e['written']:>9} docs in {e['duration_ms']/1000:7.2f}s = {e['written']*1000/max(e['duration_ms'],1):>8.0f} docs/s"
      f"  ({e['write_mode']}), CPU s: client {cpu:.1f} PostgreSQL {pg:.1f} mongod {mongo:.1f}, peak RSS {rss/1024:.0f} MiB")
PY
}

ceiling() { # mongo-ceiling arguments; prints its line and mongod's CPU seconds for it
  local before after
  before=$(cpu_s "$MONGO_PID" 0)
  "$BIN/mongo-ceiling" "$@"
  after=$(cpu_s "$MONGO_PID" 0)
  echo "    (mongod CPU s: $(echo "$after $before" | awk '{ printf "%.1f", $1 - $2 }'))"
}

# `verify --full` of what a run wrote, timed like the run; its rate as a ratio to the run's.
verify_full() { # name database entity migrate-name
  local name="$1" db="$2" entity="$3" against="$4"
  /usr/bin/time -v "$BIN/cutover" verify --full --database "$db" -o "$WORK/$name.json" "$entity" \
    >"$WORK/$name.out" 2>"$WORK/$name.time" || true
  python3 - "$name" "$WORK/$name.json" "$WORK/$name.time" "$WORK/$against.json" <<'PY'
import json, re, sys
name, result, timing, against = sys.argv[1:5]
t = open(timing).read()
wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (?:(\d+):)?(\d+):([\d.]+)", t)
secs = int(wall.group(1) or 0) * 3600 + int(wall.group(2)) * 60 + float(wall.group(3))
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
cpu = float(re.search(r"User time \(seconds\): ([\d.]+)", t).group(1)) + float(re.search(r"System time \(seconds\): ([\d.]+)", t).group(1))
m = json.load(open(against))["entities"][0]
run_rate = m["written"] * 1000 / max(m["duration_ms"], 1)
rate = m["read"] / max(secs, 1e-3)
print(f"{name:<28} {m['read']:>9} rows in {secs:7.2f}s = {rate:>8.0f} rows/s, {rate / run_rate:.2f}x the run's rate,"
      f" client CPU {cpu:.1f}s, peak RSS {rss/1024:.0f} MiB")
PY
}

mongo_drop() { "$BIN/mongo-ceiling" --drop "$MONGODB_URI" "$1"; }

# 6. Side by side with the peers: cutover against an independent write ceiling and the Node.js and
#    Python peers, on the same rows in the same rounds (the peers' side_by_side.sh does the runs,
#    the checks and the summary). The peers are run from a copy: shared/ may be read-only.
peers_bench() {
  local src="$PEERS_SRC"
  if [ ! -f "$src/side_by_side.sh" ]; then
    echo "== side by side: skipped, no peers at $src (set CUTOVER_PEERS_DIR to their directory)"
    return 0
  fi
  for tool in node npm; do
    if ! command -v "$tool" >/dev/null; then
      echo "== side by side: skipped, $tool is not installed (the Node.js peer needs Node.js 20+)"
      return 0
    fi
  done
  src="$(cd "$src" && pwd)"
  echo "== side by side with the peers of $src (a progress line a run, then their summary)"
  # A fresh copy of the peers' sources each time; node_modules (installed again when the lock
  # changes), the ceiling's build and its Cargo.lock are kept beside it.
  mkdir -p "$PEERS_WORK/node" "$PEERS_WORK/results"
  local copy="$PEERS_WORK/peers"
  rm -rf "$copy"
  cp -r "$src" "$copy"
  chmod -R u+w "$copy"
  rm -rf "$copy/node_peer/node_modules" "$copy/rust/target" "$copy/results"
  if ! cmp -s "$copy/node_peer/package-lock.json" "$PEERS_WORK/node/package-lock.json" ||
    [ ! -d "$PEERS_WORK/node/node_modules" ]; then
    cp "$copy/node_peer/package.json" "$copy/node_peer/package-lock.json" "$PEERS_WORK/node/"
    (cd "$PEERS_WORK/node" && npm ci --silent --no-audit --no-fund)
  fi
  ln -s "$PEERS_WORK/node/node_modules" "$copy/node_peer/node_modules"
  local ceiling="${CEILING_BIN:-}"
  if [ -z "$ceiling" ]; then
    [ -f "$copy/rust/Cargo.lock" ] || [ ! -f "$PEERS_WORK/Cargo.lock" ] || cp "$PEERS_WORK/Cargo.lock" "$copy/rust/"
    CARGO_TARGET_DIR="$PEERS_WORK/target" cargo build --release --quiet --manifest-path "$copy/rust/Cargo.toml" --bin ceiling
    cp "$copy/rust/Cargo.lock" "$PEERS_WORK/Cargo.lock"
    ceiling="$PEERS_WORK/target/release/ceiling"
  fi
  local out
  out="$PEERS_WORK/results/sbs-$(date +%Y%m%d-%H%M%S)-$PATIENTS"
  # The rows of sections 1-5 (cutover_bench), the servers of this script; the summary ends with
  # cutover's ratios (docs/s, client CPU, peak RSS, mongod CPU) to the ceiling, Node and Python.
  # Its progress goes to stderr, a line a run.
  if ! CUTOVER_ROOT="$ROOT" CUTOVER_BIN="$BIN/cutover" CEILING_BIN="$ceiling" SRC_DB=cutover_bench \
    CUTOVER_SOURCE_URL="$ADMIN_URL" PATIENTS="$PATIENTS" ROUNDS="${ROUNDS:-3}" OUT="$out" \
    bash "$copy/side_by_side.sh"; then
    echo "bench: the side by side failed (its logs: $out/logs)" >&2
    return 1
  fi
  for db in sbs_g sbs_flat sbs_ref_g sbs_ref_flat; do mongo_drop "$db"; done
}

# 9. The files stage. Each run writes into a fresh target (GridFS: a dropped database; the
#    stand-in: a database and a bucket of their own, emptied again by `rollback` after, so that
#    the stand-in does not keep the bytes), so every file is uploaded.
files_run() { # name args...
  local name="$1"; shift
  /usr/bin/time -v "$BIN/cutover" migrate --quiet --ignore-dependencies --no-backup \
    --report "$WORK/$name.json" "$@" >"$WORK/$name.out" 2>"$WORK/$name.time" || [ $? -eq 2 ]
  python3 - "$name" "$WORK/$name.json" "$WORK/$name.time" <<'PY'
import json, re, sys
name, report, timing = sys.argv[1:4]
r = json.load(open(report))
e = [e for e in r["entities"] if e.get("files")][0]
f = e["files"]
t = open(timing).read()
rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", t).group(1))
cpu = float(re.search(r"User time \(seconds\): ([\d.]+)", t).group(1)) + float(re.search(r"System time \(seconds\): ([\d.]+)", t).group(1))
print(f"{name:<28} {f['uploaded']:>5} files, {f['bytes']/2**20:8.1f} MiB in {e['duration_ms']/1000:6.2f}s = {f['mb_per_sec']:6.1f} MB/s"
      f" (rejected {e['rejected']}), client CPU {cpu:.1f}s, peak RSS {rss/1024:.0f} MiB")
PY
}

# A one-entity pipeline over the generated files, into bucket $2.
gen_pipeline() { # dir bucket
  mkdir -p "$1/mappings"
  cat >"$1/mappings/gen_files.toml" <<TOML
version = 1
name = "gen_files"
[source]
table = "gen_files"
key = ["id"]
[file]
path_column = "path"
size_column = "size"
checksum_column = "sha"
bucket = "$2"
[file.appwrite]
maximum_file_size = 134217728
[[field]]
path = "size"
column = "size"
TOML
  printf 'version = 1\nname = "gen"\nmappings_dir = "mappings"\n[[stage]]\nname = "files"\nentities = ["gen_files"]\n' \
    >"$1/pipeline.toml"
}

files_bench() {
  echo "== files stage: sample files (scripts/fixtures.sh) and ${FILES_GIB} GiB of generated files"
  have=$(psql "$FILES_URL" -Atc "SELECT count(*) FROM documents" 2>/dev/null || echo 0)
  if [ "$have" != "20" ]; then
    psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS cutover_bench_files" -qc "CREATE DATABASE cutover_bench_files"
  fi
  CUTOVER_SOURCE_URL="$FILES_URL" scripts/fixtures.sh --patients 100 --files-dir "$WORK/sample" >/dev/null
  # The stand-in takes a bucket once per project: each run's mappings name one of their own.
  local tag; tag=$(date +%s)
  cp -r mappings "$WORK/mappings-files"
  sed -i "s/^bucket = \"documents\"/bucket = \"documents_$tag\"/" "$WORK/mappings-files/documents.toml"
  if [ "$FILES_GIB" != 0 ]; then
    mkdir -p "$WORK/gen/files"
    # Files of 1, 4, 16 and 64 MiB in turn, random bytes, up to FILES_GIB GiB; their rows.
    python3 - "$WORK/gen/files" "$FILES_GIB" >"$WORK/gen/rows.csv" <<'PY'
import hashlib, os, sys
root, gib = sys.argv[1], float(sys.argv[2])
total, i, sizes = 0, 0, [1, 4, 16, 64]
while total < gib * 2**30:
    i += 1
    size = sizes[i % 4] * 2**20 + i
    data = os.urandom(size)
    with open(os.path.join(root, f"g{i}.bin"), "wb") as f:
        f.write(data)
    print(f"{i},g{i}.bin,{size},{hashlib.sha256(data).hexdigest()}")
    total += size
PY
    psql "$FILES_URL" -qc "DROP TABLE IF EXISTS gen_files" \
      -qc "CREATE TABLE gen_files (id int PRIMARY KEY, path text, size bigint, sha text)" \
      -qc "\\copy gen_files FROM '$WORK/gen/rows.csv' WITH (FORMAT csv)"
    gen_pipeline "$WORK/gen/gridfs" gen
    gen_pipeline "$WORK/gen/aw" "gen_$tag"
  fi
  export CUTOVER_SOURCE_URL="$FILES_URL"
  mongo_drop bench_files
  files_run "files sample -> GridFS" --database bench_files --files-root "$WORK/sample" documents
  APPWRITE_DATABASE="bench_files_$tag" files_run "files sample -> stand-in" --target appwrite \
    --files-root "$WORK/sample" --mappings "$WORK/mappings-files" documents
  CUTOVER_FILES_ROOT="$WORK/sample" APPWRITE_DATABASE="bench_files_$tag" "$BIN/cutover" rollback --target appwrite \
    --mappings "$WORK/mappings-files" documents >/dev/null 2>&1 || true
  if [ "$FILES_GIB" != 0 ]; then
    mongo_drop bench_files
    files_run "files ${FILES_GIB} GiB -> GridFS" --database bench_files --files-root "$WORK/gen/files" \
      --pipeline "$WORK/gen/gridfs/pipeline.toml"
    mongo_drop bench_files
    APPWRITE_DATABASE="bench_gen_$tag" files_run "files ${FILES_GIB} GiB -> stand-in" --target appwrite \
      --files-root "$WORK/gen/files" --pipeline "$WORK/gen/aw/pipeline.toml"
    CUTOVER_FILES_ROOT="$WORK/gen/files" APPWRITE_DATABASE="bench_gen_$tag" "$BIN/cutover" rollback --target appwrite \
      --pipeline "$WORK/gen/aw/pipeline.toml" >/dev/null 2>&1 || true
  fi
}

if [ "$FILES_ONLY" = 1 ]; then
  files_bench
  exit 0
fi
if [ "$PEERS" = 2 ]; then
  peers_bench
  exit 0
fi

echo "== cutover bench: $PATIENTS patients, $(psql "$BENCH_URL" -Atc 'SELECT count(*) FROM immunizations') immunizations ($(nproc) cores)"
mongo_drop bench_patients; mongo_drop bench_flat; mongo_drop bench_imm
run "patients+guardians (empty)" bench_patients patients
run "patients+guardians (full)"  bench_patients patients
verify_full "verify --full patients" bench_patients patients "patients+guardians (empty)"
run "patients flat (empty)"      bench_flat patients --mappings "$WORK/mappings-flat"
run "immunizations (empty)"      bench_imm immunizations
echo "-- mongo-ceiling: the same documents through cutover's own writer, nothing to read or map (not independent: see the side by side)"
ceiling "$MONGODB_URI" bench_patients patients bench_ceiling
ceiling "$MONGODB_URI" bench_flat patients bench_ceiling
ceiling "$MONGODB_URI" bench_imm immunizations bench_ceiling
mongo_drop bench_patients; mongo_drop bench_flat; mongo_drop bench_imm
[ "$PEERS" = 0 ] || peers_bench
"$BIN/examples/appwrite-bench" "$ROOT/pipelines/registry.toml" patients 50000

# 8. `cutover migrate --target appwrite` end to end into the stand-in (50,000 patients with their
#    guardians): bulk upserts of 100 rows vs one row per request (--bulk-rows 1).
AW_URL="${ADMIN_URL%/*}/cutover_bench_aw"
have=$(psql "$AW_URL" -Atc "SELECT count(*) FROM patients" 2>/dev/null || echo 0)
if [ "$have" != "50000" ]; then
  psql "$ADMIN_URL" -qc "DROP DATABASE IF EXISTS cutover_bench_aw" -qc "CREATE DATABASE cutover_bench_aw"
  CUTOVER_SOURCE_URL="$AW_URL" scripts/fixtures.sh --patients 50000 --no-files
fi
for bulk in 100 1; do
  CUTOVER_SOURCE_URL="$AW_URL" APPWRITE_DATABASE="bench_$bulk" \
    run "appwrite patients bulk=$bulk" unused patients --target appwrite --bulk-rows "$bulk"
done

files_bench
