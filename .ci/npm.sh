#!/usr/bin/env bash
# Installs the MCP Inspector CLI (an MCP client this project did not write) for the skill-box
# serving tests. Idempotent; the tests look for it in the same cache dir.
set -euo pipefail
PREFIX="${TRAJDISTILL_NPM_PREFIX:-$HOME/.cache/trajdistill/npm}"
BIN="$PREFIX/node_modules/.bin/mcp-inspector-cli"
if [ -x "$BIN" ]; then
  echo "mcp inspector ready: $PREFIX"
  exit 0
fi
command -v npm >/dev/null || { echo "npm is missing: apt-get install -y nodejs npm" >&2; exit 1; }
mkdir -p "$PREFIX"
npm install --prefix "$PREFIX" --no-fund --no-audit --loglevel=error "@modelcontextprotocol/inspector-cli@^1.0"
[ -x "$BIN" ] || { echo "inspector installed but $BIN is missing" >&2; exit 1; }
echo "mcp inspector ready: $PREFIX"
