#!/usr/bin/env bash
# `carehub decode --stdin` end to end against TheengsDecoder on the same adverts, in
# the same run (docs/performance.md, "decode --stdin end to end").
#   benches/peers/decode_stdin.sh [N]      # VENV=... to reuse a venv
set -euo pipefail
cd "$(dirname "$0")/../.."
venv=${VENV:-${TMPDIR:-/tmp}/carehub-decode-peers}
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -c 'import TheengsDecoder' 2>/dev/null ||
    "$venv/bin/pip" install -q theengsdecoder==2.5.0
target=${CARGO_TARGET_DIR:-target}
cargo build --release --bin carehub >/dev/null
"$venv/bin/python" benches/peers/decode_stdin.py "$target/release/carehub" "${1:-20000}"
