#!/usr/bin/env bash
# Sends N requests to a scoregate endpoint, prints each answer, then a per-deployment tally.
#
#   load-test/load_test.sh N URL [version]
#
# As in the seeds' Istio canary guide: with a version, every request is pinned to that
# deployment with the pin header (PIN_HEADER, default x-api-version). Needs curl.
set -euo pipefail

if [ $# -lt 2 ] || ! [[ $1 =~ ^[0-9]+$ ]]; then
  echo "usage: $0 N URL [version]   e.g. $0 20 http://127.0.0.1:8080/score green" >&2
  exit 2
fi
n=$1 url=$2 version=${3:-}
[[ $url == http://* || $url == https://* ]] || url="http://$url"
pin_header=${PIN_HEADER:-x-api-version}
command -v curl >/dev/null || { echo "$0: curl is required" >&2; exit 2; }

headers=$(mktemp)
trap 'rm -f "$headers"' EXIT
args=(-s -S --max-time 30 -D "$headers")
[ -n "$version" ] && args+=(-H "$pin_header: $version")

declare -A tally=()
failed=0
for ((i = 1; i <= n; i++)); do
  if ! body=$(curl "${args[@]}" "$url"); then
    echo "request $i: connection failed"
    failed=$((failed + 1))
    continue
  fi
  echo "$body"
  status=$(head -n1 "$headers" | awk '{print $2}')
  dep=$({ grep -i '^x-deployment:' "$headers" || true; } | tail -n1 | awk '{print $2}' | tr -d '\r')
  key="${dep:-(none)}"
  [[ $status == 2* ]] || key="$key [HTTP $status]"
  tally[$key]=$(( ${tally[$key]:-0} + 1 ))
done

echo
printf '%-28s %8s %7s\n' deployment requests share
while IFS= read -r k; do
  [ -n "$k" ] || continue
  printf '%-28s %8d %6.1f%%\n' "$k" "${tally[$k]}" "$(awk -v a="${tally[$k]}" -v b="$n" 'BEGIN{print 100*a/b}')"
done < <(printf '%s\n' "${!tally[@]}" | sort)
[ "$failed" -eq 0 ] || printf '%-28s %8d %6.1f%%\n' "(connection failed)" "$failed" "$(awk -v a="$failed" -v b="$n" 'BEGIN{print 100*a/b}')"
