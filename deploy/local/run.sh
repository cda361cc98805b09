#!/usr/bin/env bash
# `make run`: the reference scenario on one machine. The event-display subscriber prints each
# event it receives on stdout; bridge logs JSON lines on stderr. Ctrl-C stops both.
set -u
BIN=${BIN:-.venv/bin}
"$BIN/bridge" event-display --host 127.0.0.1 --port 8081 &
DISPLAY_PID=$!
trap 'kill $DISPLAY_PID 2>/dev/null; wait $DISPLAY_PID 2>/dev/null' EXIT
echo "bridge: ingress on http://127.0.0.1:8080/, event-display on http://127.0.0.1:8081/"
echo "bridge: in another terminal run: .venv/bin/bridge send --sample oss-put-object"
"$BIN/bridge" run --config config.example.toml
