#!/usr/bin/env bash
# Runs every libFuzzer target for a while and prints, per target, how many inputs it ran,
# the coverage it reached (libFuzzer's cov: edges and ft: features) and the crashes found.
#
#   bench/fuzz.sh [--total] [--jobs J] [--only a,b] N
#
# N minutes (decimals allowed) for EACH target; with --total, N minutes in all, split
# evenly among the targets. Targets run one after another (--jobs J: J at a time; the
# machine has 2 CPUs, so 1 is the default). Each run starts from the seed corpus
# (tests/fuzz/corpus/T) plus what earlier runs kept (build-fuzz/tests/fuzz/corpus/T, the
# corpus ctest uses too). A crash stops libFuzzer, so a target that crashes is restarted
# for the rest of its time, at most 20 times; every crashing input (crash-, leak-,
# timeout-, oom-) is kept under build-fuzz/fuzz-artifacts/T/. Exit status 1 if any
# target crashed. Not a test: CI runs each target 20 s through ctest instead.
set -euo pipefail
cd "$(dirname "$0")/.."

total=0 jobs=1 only=""
while [ $# -gt 1 ]; do
  case "$1" in
    --total) total=1; shift ;;
    --jobs) jobs="$2"; shift 2 ;;
    --only) only="$2"; shift 2 ;;
    *) break ;;
  esac
done
if [ $# -ne 1 ] || ! [[ "$1" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
  sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
minutes="$1"

build=build-fuzz
if [ ! -x "$build/tests/fuzz/fuzz_hparse" ]; then
  echo "building the fuzz targets in $build (clang)..." >&2
  CC=clang scripts/build.sh "$build" -DCMAKE_BUILD_TYPE=Debug -DKBRIDGE_FUZZ=ON >&2
else
  cmake --build "$build" -j"$(nproc)" >/dev/null
fi

targets=()
for src in tests/fuzz/fuzz_*.c; do
  t=$(basename "$src" .c)
  t=${t#fuzz_}
  if [ -n "$only" ] && [[ ",$only," != *",$t,"* ]]; then continue; fi
  targets+=("$t")
done
[ ${#targets[@]} -gt 0 ] || { echo "no targets" >&2; exit 2; }

each=$(awk -v m="$minutes" -v n="${#targets[@]}" -v t="$total" \
  'BEGIN { s = m * 60; if (t) s = s / n; s = int(s + 0.5); if (s < 1) s = 1; print s }')
how="each"
[ "$total" = 1 ] && how="split from $minutes min in all"
echo "fuzzing ${#targets[@]} targets, ${each} s each ($how), $jobs at a time" >&2

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

s_count_crashes() {
  find "$1" -type f \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l
}

# One target: loops until its time is used up; writes a summary line to $out/T.sum.
run_target() {
  local t="$1" bin="$build/tests/fuzz/fuzz_$1"
  local work="$build/tests/fuzz/corpus/$t" art="$build/fuzz-artifacts/$t"
  mkdir -p "$work" "$art"
  local start end left execs=0 cov=0 ft=0 restarts=0 log="$out/$t.log"
  local before
  before=$(s_count_crashes "$art")
  start=$(date +%s)
  end=$((start + each))
  while :; do
    left=$((end - $(date +%s)))
    [ "$left" -ge 1 ] || break
    : >"$log"
    nice "$bin" -max_total_time="$left" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
      -artifact_prefix="$art/" "$work" "tests/fuzz/corpus/$t" >"$log" 2>&1 || true
    # The last status line: "#N  DONE|pulse|NEW ... cov: C ft: F ..."; final stats give
    # the exact count of runs.
    local n c f
    n=$(awk '/^stat::number_of_executed_units:/ { print $2 }' "$log" | tail -1)
    [ -n "$n" ] || n=$(grep -oE '^#[0-9]+' "$log" | tail -1 | tr -d '#' || true)
    c=$(grep -oE 'cov: [0-9]+' "$log" | tail -1 | awk '{ print $2 }' || true)
    f=$(grep -oE 'ft: [0-9]+' "$log" | tail -1 | awk '{ print $2 }' || true)
    execs=$((execs + ${n:-0}))
    [ -n "$c" ] && [ "$c" -gt "$cov" ] && cov=$c
    [ -n "$f" ] && [ "$f" -gt "$ft" ] && ft=$f
    if grep -qE '^==[0-9]+==ERROR|^SUMMARY: |deadly signal|Test unit written' "$log"; then
      restarts=$((restarts + 1))
      cp "$log" "$art/log-$restarts-$(date +%s).txt"
      [ "$restarts" -lt 20 ] || break
      continue
    fi
    break
  done
  local crashes
  crashes=$(($(s_count_crashes "$art") - before))
  [ "$crashes" -ge "$restarts" ] || crashes=$restarts
  local secs=$(($(date +%s) - start))
  local corpus
  corpus=$(find "$work" -type f | wc -l)
  echo "$t $secs $execs $cov $ft $corpus $crashes" >"$out/$t.sum"
}

running=0
for t in "${targets[@]}"; do
  run_target "$t" &
  running=$((running + 1))
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
done
wait

printf '%-12s %6s %12s %9s %6s %7s %7s %8s\n' target time execs exec/s cov ft corpus crashes
bad=0
for t in "${targets[@]}"; do
  read -r name secs execs cov ft corpus crashes <"$out/$t.sum"
  rate=$(awk -v e="$execs" -v s="$secs" 'BEGIN { printf "%d", s ? e / s : 0 }')
  printf '%-12s %5ss %12s %9s %6s %7s %7s %8s\n' "$name" "$secs" "$execs" "$rate" "$cov" "$ft" \
    "$corpus" "$crashes"
  [ "$crashes" = 0 ] || bad=1
done
if [ "$bad" = 1 ]; then
  echo "crashing inputs and logs: $build/fuzz-artifacts/<target>/" >&2
fi
exit "$bad"
