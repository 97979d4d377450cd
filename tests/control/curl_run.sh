#!/usr/bin/env bash
# The issue's acceptance script: only curl (and the shell) against `consortium local`.
# usage: curl_run.sh URL TOKEN_FILE OUT_DIR  -> prints the run id
set -euo pipefail
URL=$1
AUTH="Authorization: Bearer $(cat "$2")"
OUT=$3

# wait for the four hospitals to be online
for _ in $(seq 1 240); do
  online=$(curl -sSf -H "$AUTH" "$URL/api/v1/nodes" | { grep -o '"status":"online"' || true; } | wc -l)
  [ "$online" -ge 4 ] && break
  sleep 0.25
done
curl -sSf -H "$AUTH" "$URL/api/v1/nodes" > "$OUT/nodes.json"

# start a heart-disease run
curl -sSf -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"app": "heart-disease", "run_config": {"num-rounds": 3}, "seed": 7}' \
  "$URL/api/v1/runs" > "$OUT/started.json"
RUN=$(sed -E 's/.*"run_id": *"([^"]+)".*/\1/' "$OUT/started.json")

# wait for it: the event stream ends with the run
curl -sSfN --max-time 120 -H "$AUTH" "$URL/api/v1/runs/$RUN/events" > "$OUT/events.txt"

curl -sSf -H "$AUTH" "$URL/api/v1/runs/$RUN" > "$OUT/run.json"
curl -sSf -H "$AUTH" "$URL/api/v1/runs/$RUN/metrics" > "$OUT/metrics.json"
curl -sSf -H "$AUTH" -o "$OUT/model.npz" "$URL/api/v1/runs/$RUN/model?format=npz"
echo "$RUN"
