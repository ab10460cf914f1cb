#!/usr/bin/env bash
# Builds the JavaScript example into target/wasm32-wasip2/plugin/js_drop_canary.wasm.
# package.json pins @bytecodealliance/preview2-shim: componentize-js imports it but declares it only as a
# devDependency, so a clean install would lack it.
# HTTP support is disabled: Weir plugins get no network, and the host refuses components that import it.
# Needs Node.js and npm; `npm install` fetches componentize-js from the npm registry, then everything runs offline.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
out="${CARGO_TARGET_DIR:-$root/target}/wasm32-wasip2/plugin/js_drop_canary.wasm"
mkdir -p "$(dirname "$out")"
if [ -f "$out" ] && [ "$out" -nt "$here/app.js" ] && [ "$out" -nt "$root/wit/weir.wit" ] \
  && [ "$out" -nt "$root/sdk/js/weir.js" ]; then exit 0; fi
cd "$here"
[ -x node_modules/.bin/componentize-js ] || npm install --no-audit --no-fund --loglevel=error
# componentize-js takes one source file: the SDK helpers, then the plugin.
mkdir -p build
cat "$root/sdk/js/weir.js" app.js > build/plugin.js
node_modules/.bin/componentize-js build/plugin.js --wit "$root/wit" --world-name weir:transform/plugin --disable http fetch-event -o "$out.tmp"
mv "$out.tmp" "$out"
echo "built $out"
