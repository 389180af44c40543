#!/usr/bin/env bash
# Memory benchmark with S3 storage (not a test): benches/memory.sh with the
# server's NARs in an S3 bucket, so the 1 GiB NAR goes up as a multipart
# upload on the cold miss and is streamed back from S3 on the warm hit; peak
# RSS of the release server must stay within the budget.
#
# Needs what benches/memory.sh needs. The S3 server is the one at
# NCPS_TEST_S3_ENDPOINT, or else a moto started by .ci/s3.sh (and stopped at
# the end); the bucket is created here with an unsigned PUT, which moto
# accepts.
#
#   benches/memory-s3.sh
#
# Environment: as benches/memory.sh (NCPS_BENCH_SIZE_MIB, NCPS_BENCH_LIMIT_MIB,
# NCPS_BENCH_NO_BUILD), plus NCPS_TEST_S3_ENDPOINT.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)

STARTED_MOTO=""
cleanup() {
    if [ -n "$STARTED_MOTO" ]; then
        ncps_s3_stop
    fi
}
trap cleanup EXIT

if [ -z "${NCPS_TEST_S3_ENDPOINT:-}" ]; then
    # shellcheck source=../.ci/s3.sh
    source "$ROOT/.ci/s3.sh"
    STARTED_MOTO=1
fi

BUCKET="ncps-bench-memory-$$-$(date +%s)"
curl -fsS -X PUT -o /dev/null "$NCPS_TEST_S3_ENDPOINT/$BUCKET" || {
    echo "memory-s3.sh: could not create bucket $BUCKET at $NCPS_TEST_S3_ENDPOINT" >&2
    exit 1
}
echo "== S3 storage: bucket $BUCKET at $NCPS_TEST_S3_ENDPOINT"

export CACHE_STORAGE_S3_BUCKET="$BUCKET"
export CACHE_STORAGE_S3_ENDPOINT="$NCPS_TEST_S3_ENDPOINT"
export CACHE_STORAGE_S3_REGION=us-east-1
export CACHE_STORAGE_S3_FORCE_PATH_STYLE=true
export CACHE_STORAGE_S3_ACCESS_KEY_ID=test
export CACHE_STORAGE_S3_SECRET_ACCESS_KEY=testtest

"$ROOT/benches/memory.sh"
