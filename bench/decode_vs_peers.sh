#!/usr/bin/env bash
# Times `ipfixsvc dump --count` against the same file decode loop written with two other Rust
# IPFIX decoders (bench/peers: netgauze-flow-pkt, netflow_parser), on a fixed-length and a
# variable-length IPFIX file, and prints the ratios.
#
#   bench/decode_vs_peers.sh            # from anywhere; results also in bench/out/peers-results.tsv
#
# Env: RUNS (default 3, median taken), MESSAGES (default 200000), GEN (path of gen_ipfix.py).
# Builds: ipfixsvc release (this repo's own target/) and the bench-only peers crate into
# bench/out/peers-target (bench/out is gitignored). Files are regenerated only when missing or
# made with other parameters.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
OUT=bench/out
RUNS=${RUNS:-3}
MESSAGES=${MESSAGES:-200000}
GEN=${GEN:-$ROOT/../shared/bench/gen_ipfix.py}
IPFIXSVC=target/release/ipfixsvc
PEERS=$OUT/peers-target/release/peers
mkdir -p "$OUT"

echo "== building ipfixsvc (release) and bench/peers (release)" >&2
cargo build --release --quiet
cargo build --release --quiet --locked --manifest-path bench/peers/Cargo.toml \
    --target-dir "$OUT/peers-target"

# gen KIND RECORDS_PER_MESSAGE -> generates $OUT/KIND.ipfix unless an identical one is there;
# the generator's summary line is kept in $OUT/KIND.gen.
gen() {
    local kind=$1 rpm=$2 file=$OUT/$1.ipfix
    local want="kind=$kind messages=$MESSAGES rpm=$rpm gen=$(sha256sum "$GEN" | cut -c1-16)"
    if [[ -f $file && -f $OUT/$kind.gen && "$(head -n1 "$OUT/$kind.gen")" == "$want" ]]; then
        echo "== reusing $file" >&2
        return
    fi
    echo "== generating $file" >&2
    local summary
    summary=$(python3 "$GEN" --kind "$kind" --messages "$MESSAGES" --records-per-message "$rpm" \
        --out "$file")
    printf '%s\n%s\n' "$want" "$summary" > "$OUT/$kind.gen"
}
gen fixed 23
gen varlen 12

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
json_field() { python3 -c 'import json,sys; print(json.loads(sys.stdin.read())[sys.argv[1]])' "$1"; }

RES=$OUT/peers-results.tsv
: > "$OUT/peers-runs.jsonl"
printf 'file\tdecoder\trun\trecords\twall_s\tloop_s\texpected\n' > "$RES"
for kind in fixed varlen; do
    file=$OUT/$kind.ipfix
    gen_records=$(sed -n 2p "$OUT/$kind.gen" | tr ' ' '\n' | sed -n 's/^records=//p')
    expected=
    for run in $(seq 1 "$RUNS"); do
        # Interleaved rounds, so drift on a shared machine spreads over all decoders.
        t0=$(now)
        line=$("$IPFIXSVC" dump --count "$file")
        t1=$(now)
        n=$(json_field dataRecords <<< "$line")
        if [[ -z $expected ]]; then
            expected=$n
            if [[ $n != "$gen_records" ]]; then
                echo "WARNING: $kind: ipfixsvc counts $n data records, the generator wrote $gen_records" >&2
            fi
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" ipfixsvc "$run" "$n" \
            "$(elapsed "$t0" "$t1")" "" "$expected" >> "$RES"
        for peer in netgauze netflow_parser; do
            t0=$(now)
            line=$("$PEERS" "$peer" "$file" --expected "$expected")
            t1=$(now)
            echo "$line" >> "$OUT/peers-runs.jsonl"
            printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$peer" "$run" \
                "$(json_field records <<< "$line")" "$(elapsed "$t0" "$t1")" \
                "$(json_field seconds <<< "$line")" "$expected" >> "$RES"
        done
        echo "== $kind: round $run/$RUNS done" >&2
    done
done

python3 - "$RES" <<'EOF'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
med = lambda xs: statistics.median(float(x) for x in xs)
groups = {}
for r in rows:
    groups.setdefault((r["file"], r["decoder"]), []).append(r)
hdr = ("file", "decoder", "records", "wall s", "wall rec/s", "loop s", "loop rec/s",
       "ipfixsvc/peer wall", "ipfixsvc/peer loop")
out, warnings = [hdr], []
for (f, d), rs in groups.items():
    recs = {r["records"] for r in rs}
    n = int(rs[0]["records"])
    exp = int(rs[0]["expected"])
    wall = med(r["wall_s"] for r in rs)
    if d == "ipfixsvc":
        base = wall
        out.append((f, d, n, f"{wall:.3f}", f"{n / wall / 1e6:.2f}M", "-", "-", "1.00", "-"))
    else:
        loop = med(r["loop_s"] for r in rs)
        out.append((f, d, n, f"{wall:.3f}", f"{n / wall / 1e6:.2f}M", f"{loop:.3f}",
                    f"{n / loop / 1e6:.2f}M", f"{wall / base:.2f}", f"{loop / base:.2f}"))
    if len(recs) > 1:
        warnings.append(f"WARNING: {f}/{d}: record count varies between runs: {sorted(recs)}")
    if n != exp:
        warnings.append(f"WARNING: {f}/{d}: returned {n} data records, ipfixsvc counts {exp} "
                        f"({exp - n} missing, {100 * (exp - n) / exp:.2f}%)")
w = [max(len(str(row[i])) for row in out) for i in range(len(hdr))]
for row in out:
    print("  ".join(str(c).rjust(w[i]) if i >= 2 else str(c).ljust(w[i]) for i, c in enumerate(row)))
print(f"medians of {len({r['run'] for r in rows})} runs. wall: whole process, timed outside it "
      "(ipfixsvc streams the file; peers read it all, then decode). loop: the peer's decode loop "
      "alone (file already in memory).")
print("ipfixsvc/peer = peer seconds / ipfixsvc wall seconds on the same file (>1: ipfixsvc faster); "
      "the loop column still compares against ipfixsvc's whole process.")
for x in warnings:
    print(x)
EOF
