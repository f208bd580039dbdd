#!/bin/bash
# What a user of the first README command gets: `ipfixsvc serve` writing NDJSON (the default
# stream) to a file in tmpfs, fed by N `ipfixsvc send` sessions over loopback TCP, each sending
# the same 460,000-record file (gen_ipfix.py --kind fixed, 20,000 messages of 23 records).
# Time from the first byte sent to the end of the drain: SIGTERM once the senders are done, and
# the process exits (0) only when every record read is written.
#   bench/ndjson_e2e.sh [SESSIONS]        BIN=path/to/ipfixsvc to compare binaries
set -euo pipefail
cd "$(dirname "$0")/out" 2>/dev/null || { mkdir -p "$(dirname "$0")/out"; cd "$(dirname "$0")/out"; }
BIN=${BIN:-$(cd ../.. && pwd)/target/release/ipfixsvc}
N=${1:-1}
OUT=${OUT:-/dev/shm/ipfixsvc-e2e.ndjson}
[ -f f.ipfix ] || python3 ../../../shared/bench/gen_ipfix.py --kind fixed --messages 20000 --records-per-message 23 --out f.ipfix >/dev/null
rm -f $OUT
IPFIXSVC__NODE__ROLES=collector IPFIXSVC__COLLECTOR__TCP_LISTEN=127.0.0.1:14740 IPFIXSVC__COLLECTOR__UDP_LISTEN= IPFIXSVC__OUTPUT__PATH=$OUT IPFIXSVC__SHUTDOWN__GRACE_SECS=60 $BIN serve 2>e2e-log.txt &
PID=$!
sleep 1
START=$(date +%s.%N)
PIDS=()
for i in $(seq 1 $N); do $BIN send --to 127.0.0.1:14740 f.ipfix >/dev/null 2>&1 & PIDS+=($!); done
wait "${PIDS[@]}"
CPU=$(awk '{print ($14+$15)/100}' /proc/$PID/stat)
kill -TERM $PID; RC=0; wait $PID || RC=$?
END=$(date +%s.%N)
L=$(wc -l < $OUT)
python3 -c "w=$END-$START; print(f'sessions $N: {$L} lines in {w:.2f} s = {$L/w/1e6:.2f}M lines/s (exit $RC; collector cpu before the drain {$CPU} s)')"
rm -f $OUT
