#!/usr/bin/env bash
# Builds the Python example into target/wasm32-wasip2/plugin/python_wiki_project.wasm.
# Needs componentize-py (pip install componentize-py); works offline.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out="${CARGO_TARGET_DIR:-$root/target}/wasm32-wasip2/plugin/python_wiki_project.wasm"
mkdir -p "$(dirname "$out")"
# Rebuild only when the source or the contract changed.
if [ -f "$out" ] && [ "$out" -nt "$here/app.py" ] && [ "$out" -nt "$root/wit/weir.wit" ] \
  && [ "$out" -nt "$root/sdk/python/weir_columns.py" ]; then exit 0; fi
cd "$here"
componentize-py -d "$root/wit" -w weir:transform/plugin componentize -p . -p "$root/sdk/python" app -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out"
