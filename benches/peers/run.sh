#!/usr/bin/env bash
# Runs the criterion decode benchmark and the Python peers on the same payloads,
# then prints ns/advert and the ratio (the table in docs/performance.md).
#   benches/peers/run.sh            # VENV=... to reuse a venv
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${VENV:-${TMPDIR:-/tmp}/carehub-decode-peers}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q bthome-ble==3.25.0 theengsdecoder==2.5.0 pycryptodomex
fi
target=${CARGO_TARGET_DIR:-target}
cargo bench --bench decode -- --noplot >/dev/null
declare -A rust
for d in "$target"/criterion/decode/*/; do
    [ -f "$d/new/estimates.json" ] || continue
    name=$(basename "$d")
    rust[$name]=$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["median"]["point_estimate"]))' "$d/new/estimates.json")
done
printf 'decoder\tpayload\tns/advert\tratio to carehub\n'
for k in "${!rust[@]}"; do printf 'carehub\t%s\t%s\t1\n' "$k" "${rust[$k]}"; done | sort
"$venv/bin/python" benches/peers/decode_peers.py | while IFS=$'\t' read -r peer payload ns; do
    r=${rust[$payload]:-}
    if [ -n "$r" ]; then ratio=$(python3 -c "print(round($ns / $r))"); else ratio="n/a"; fi
    printf '%s\t%s\t%s\t%s\n' "$peer" "$payload" "$ns" "$ratio"
done
