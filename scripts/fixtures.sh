#!/usr/bin/env bash
# Loads the sample immunization registry into $CUTOVER_SOURCE_URL (or $DATABASE_URL).
#   scripts/fixtures.sh [--patients N] [--files-dir DIR] [--no-files]
# N defaults to 200 (at least 100: the deliberately bad rows sit at fixed row numbers below 100).
# The data is deterministic: the same N gives the same rows. Sample files for `documents` are written
# under DIR (default fixtures/files, not committed). Drops and recreates the registry's tables.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PATIENTS=200
FILES_DIR="$ROOT/fixtures/files"
WITH_FILES=1

while [ $# -gt 0 ]; do
  case "$1" in
    --patients) PATIENTS="$2"; shift 2 ;;
    --files-dir) FILES_DIR="$2"; shift 2 ;;
    --no-files) WITH_FILES=0; shift ;;
    -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "fixtures: unknown argument $1" >&2; exit 2 ;;
  esac
done

URL="${CUTOVER_SOURCE_URL:-${DATABASE_URL:-}}"
if [ -z "$URL" ]; then
  echo "fixtures: set CUTOVER_SOURCE_URL (try: eval \"\$(scripts/services.sh env)\")" >&2
  exit 1
fi
if ! [[ "$PATIENTS" =~ ^[0-9]+$ ]] || [ "$PATIENTS" -lt 100 ]; then
  echo "fixtures: --patients must be a whole number of at least 100" >&2
  exit 2
fi

start=$(date +%s)
PGOPTIONS="-c client_min_messages=warning" psql "$URL" -q -v ON_ERROR_STOP=1 -f "$ROOT/fixtures/schema.sql" >/dev/null
# Foreign keys are checked by triggers; the generator keeps them consistent, so skip the per-row checks.
PGOPTIONS="-c session_replication_role=replica -c synchronous_commit=off" \
  psql "$URL" -q -v ON_ERROR_STOP=1 -v patients="$PATIENTS" -f "$ROOT/fixtures/data.sql" >/dev/null

if [ "$WITH_FILES" -eq 1 ]; then
  mkdir -p "$FILES_DIR"
  # 20 documents for patients 30..49: 17 small files and 3 over 5 MiB (chunked uploads).
  python3 - "$FILES_DIR" >"$FILES_DIR/.documents.csv" <<'PY'
import hashlib, os, random, sys, uuid, hashlib as h
root = sys.argv[1]
def fx_uuid(kind, i):
    return str(uuid.UUID(h.md5(f"{kind}:{i}".encode()).hexdigest()))
sizes = [1200, 5300, 17000, 48000, 300, 9100, 64000, 2048, 777, 33000,
         12000, 4096, 25000, 100, 8000, 60000, 1500,
         6 * 1024 * 1024, 11 * 1024 * 1024 + 12345, 5 * 1024 * 1024 + 1]
kinds = [("pdf", "application/pdf"), ("jpg", "image/jpeg"), ("png", "image/png"), ("txt", "text/plain")]
for n, size in enumerate(sizes, start=1):
    patient = 29 + n
    ext, mime = kinds[n % len(kinds)]
    rel = f"patients/{patient:06d}/doc-{n:02d}.{ext}"
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = random.Random(n).randbytes(size)
    with open(path, "wb") as f:
        f.write(data)
    day = 1 + n
    print(f"{fx_uuid('document', n)},{fx_uuid('patient', patient)},doc-{n:02d}.{ext},{mime},{size},"
          f"{hashlib.sha256(data).hexdigest()},{rel},2024-08-{day:02d} 10:{n:02d}:00+00")
PY
  psql "$URL" -q -v ON_ERROR_STOP=1 \
    -c "\\copy documents (document_id, patient_id, file_name, mime_type, size_bytes, sha256, storage_path, uploaded_at) FROM '$FILES_DIR/.documents.csv' WITH (FORMAT csv)" >/dev/null
  rm -f "$FILES_DIR/.documents.csv"
fi
psql "$URL" -q -c "ANALYZE documents" >/dev/null

echo "fixtures: loaded the registry with $PATIENTS patients in $(( $(date +%s) - start ))s" >&2
psql "$URL" -At -F ' ' -c "
  SELECT 'vaccines', count(*) FROM vaccines UNION ALL SELECT 'facilities', count(*) FROM facilities
  UNION ALL SELECT 'users', count(*) FROM users UNION ALL SELECT 'sessions', count(*) FROM sessions
  UNION ALL SELECT 'patients', count(*) FROM patients UNION ALL SELECT 'guardians', count(*) FROM guardians
  UNION ALL SELECT 'immunizations', count(*) FROM immunizations
  UNION ALL SELECT 'immunization_schedules', count(*) FROM immunization_schedules
  UNION ALL SELECT 'documents', count(*) FROM documents" | sed 's/^/fixtures:   /' >&2
