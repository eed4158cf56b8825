# Shared by the load-test scripts (sourced): a temp dir `$tmp` and the background processes in
# `pids` removed on exit, and `logged_addr LOG TEXT`, the address a process logged.

tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

# The address a process logged on a line containing $2, waiting up to 60 s.
logged_addr() {
  local log=$1 what=$2
  for _ in $(seq 600); do
    local a
    a=$(grep -a "$what" "$log" | grep -oE 'addr=[0-9.]+:[0-9]+' | head -1 | cut -d= -f2 || true)
    if [ -n "$a" ]; then echo "$a"; return 0; fi
    sleep 0.1
  done
  echo "${0##*/}: no '$what' in $log:" >&2
  cat "$log" >&2
  return 1
}

# Starts built-in scoring servers blue and green of binary $1 (same model, v1) on system-picked
# ports; sets `$blue` and `$green` to their addresses.
score_servers() {
  local name
  for name in blue green; do
    "$1" score-server --name "$name" --listen 127.0.0.1:0 2>"$tmp/$name.log" &
    pids+=($!)
  done
  blue=$(logged_addr "$tmp/blue.log" "scoring server listening")
  green=$(logged_addr "$tmp/green.log" "scoring server listening")
}

# Clock ticks per second, for `cpu_ticks`.
HZ=$(getconf CLK_TCK)
# CPU ticks (user + kernel) the process $1 has used.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
