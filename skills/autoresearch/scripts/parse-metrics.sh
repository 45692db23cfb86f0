#!/usr/bin/env bash
# parse-metrics.sh: the metrics in an experiment's output (drop-in for the seed plugin's script).
#
#   bash autoresearch.sh 2>&1 | bash ${CLAUDE_SKILL_DIR}/scripts/parse-metrics.sh          # name=value lines
#   bash autoresearch.sh 2>&1 | bash ${CLAUDE_SKILL_DIR}/scripts/parse-metrics.sh total_ms # just that value
#
# Reads what the harness reads (harness/metrics.py), so what it prints is what a run is judged on:
# - `METRIC name=value` lines: names in pi-autoresearch's set (letters, digits, `_`, `.`, `µ`), an optional
#   `# comment` after the value (`METRIC total_ms=4230   # primary`); not __proto__/constructor/prototype;
# - karpathy's summary block: `key:  value` lines after the last `---` line (val_bpb, peak_vram_mb, ...);
# - values are plain decimal numbers, finite, |x| < 1e15 (no nan, inf, 1e999, 1_000); others are ignored;
# - on duplicates the last wins, and a METRIC line beats a summary-block value of the same name.
# A NAME that is absent prints nothing and exits 0, as the seed's script does (`set -euo pipefail` callers
# go on). Values are printed as written. Runs on bash 3.2 (macOS): no associative arrays, no mapfile.
set -euo pipefail
export LC_ALL=C  # bytes, not characters: the same answer in every locale (µ is matched as its UTF-8 bytes)

target="${1:-}"
max_line=4096  # harness MAX_LINE_CHARS: a longer line is never a metric line

# Parallel indexed arrays (bash 3.2 has no `declare -A`): METRIC lines, then the current summary block.
m_names=() m_values=() s_names=() s_values=()
in_block=0

name_re='^(µ|[A-Za-z0-9_.])+$'
metric_re='^[[:space:]]*METRIC[[:space:]]+([^=[:space:]]+)=([^[:space:]]+)([[:space:]]+#.*)?[[:space:]]*$'
summary_re='^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*):[[:space:]]+([^[:space:]]+)[[:space:]]*$'
dashes_re='^[[:space:]]*---[[:space:]]*$'
number_re='^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$'

strip_zeros() {  # leading zeros off a digit string (bash 3.2 has no extglob by default)
  local s="$1"
  while [[ "$s" == 0* ]]; do s="${s#0}"; done
  printf '%s' "$s"
}

finite_value() {  # harness parse_number: decimal syntax, and |float(x)| < 1e15 after rounding to a double
  local v="$1" mant exp int frac sig e10 nz
  [[ "$v" =~ $number_re ]] || return 1
  mant="${v%%[eE]*}"
  exp=0
  if [[ "$v" == *[eE]* ]]; then exp="${v#*[eE]}"; fi
  mant="${mant#[+-]}"
  int="${mant%%.*}"
  frac=""
  if [[ "$mant" == *.* ]]; then frac="${mant#*.}"; fi
  int="$(strip_zeros "$int")"
  if [[ -n "$int" ]]; then
    sig="$int$frac"
    e10=$(( ${#int} - 1 ))
  else
    nz="$(strip_zeros "$frac")"
    [[ -n "$nz" ]] || return 0  # zero, whatever the exponent
    sig="$nz"
    e10=$(( ${#nz} - ${#frac} - 1 ))
  fi
  # the exponent, without overflowing bash's 64-bit arithmetic on `1e00000000000000000000099`
  local esign="" edigits="$exp"
  case "$edigits" in [+-]*) esign="${edigits%"${edigits#?}"}"; edigits="${edigits#?}" ;; esac
  edigits="$(strip_zeros "$edigits")"
  if [[ ${#edigits} -gt 6 ]]; then
    [[ "$esign" == "-" ]] && return 0  # far below 1e15 (a double rounds it to 0 or a subnormal)
    return 1
  fi
  e10=$(( e10 ${esign:-+} ${edigits:-0} ))
  [[ $e10 -lt 14 ]] && return 0
  [[ $e10 -gt 14 ]] && return 1
  # 1e14 <= |x| < 1e15: doubles there are 0.125 apart, so x rounds to 1e15 from 999999999999999.9375 on
  [[ "${sig:0:15}" == "999999999999999" ]] || return 0
  local rest="${sig:15:4}000"
  rest="$(strip_zeros "${rest:0:4}")"
  [[ ${rest:-0} -lt 9375 ]]
}

index_of() {  # index_of NAME ARRAY...: its position among the names, or nothing
  local want="$1" i=0 n
  shift
  for n in "$@"; do
    if [[ "$n" == "$want" ]]; then printf '%s' "$i"; return 0; fi
    i=$((i + 1))
  done
  return 0
}

put() {  # put KIND NAME VALUE: last wins, first position kept
  local i
  if [[ "$1" == m ]]; then
    i="$(index_of "$2" ${m_names[@]+"${m_names[@]}"})"
    if [[ -z "$i" ]]; then m_names+=("$2"); m_values+=("$3"); else m_values[$i]="$3"; fi
  else
    i="$(index_of "$2" ${s_names[@]+"${s_names[@]}"})"
    if [[ -z "$i" ]]; then s_names+=("$2"); s_values+=("$3"); else s_values[$i]="$3"; fi
  fi
}

# Only lines that can matter reach the loop (grep is fast, bash's `read` is not); \r, \v, \f and \x1c-\x1e
# end lines as in Python's str.splitlines, which the harness uses (progress bars end their lines with \r).
while IFS= read -r line || [[ -n "$line" ]]; do
  [[ ${#line} -le $max_line ]] || continue
  if [[ "$line" =~ $metric_re ]]; then
    name="${BASH_REMATCH[1]}"
    val="${BASH_REMATCH[2]}"
    [[ "$name" =~ $name_re ]] || continue
    case "$name" in __proto__|constructor|prototype) continue ;; esac  # pi refuses them as object keys
    finite_value "$val" || continue
    put m "$name" "$val"
  elif [[ "$line" =~ $dashes_re ]]; then
    s_names=() s_values=()  # a new block: only what follows the last `---` counts
    in_block=1
  elif [[ $in_block -eq 1 && "$line" =~ $summary_re ]]; then
    name="${BASH_REMATCH[1]}"
    val="${BASH_REMATCH[2]}"
    finite_value "$val" && put s "$name" "$val"
  fi
done < <(tr '\r\013\014\034\035\036' '\n\n\n\n\n\n' | grep -a -E -e 'METRIC' -e "$dashes_re" \
           -e '^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*:[[:space:]]' || true)

# The result, as harness.metrics.MetricScanner.result(): the summary block first, METRIC lines override.
names=() values=()
for ((k = 0; k < ${#s_names[@]}; k++)); do
  i="$(index_of "${s_names[$k]}" ${m_names[@]+"${m_names[@]}"})"
  names+=("${s_names[$k]}")
  if [[ -n "$i" ]]; then values+=("${m_values[$i]}"); else values+=("${s_values[$k]}"); fi
done
for ((k = 0; k < ${#m_names[@]}; k++)); do
  i="$(index_of "${m_names[$k]}" ${s_names[@]+"${s_names[@]}"})"
  if [[ -z "$i" ]]; then names+=("${m_names[$k]}"); values+=("${m_values[$k]}"); fi
done

for ((k = 0; k < ${#names[@]}; k++)); do
  if [[ -z "$target" ]]; then
    printf '%s=%s\n' "${names[$k]}" "${values[$k]}"
  elif [[ "${names[$k]}" == "$target" ]]; then
    printf '%s\n' "${values[$k]}"
  fi
done
exit 0
