#!/usr/bin/env bash
# Make sure promtool and prometheus are installed (Debian's `prometheus` package): make test checks
# the alert rules with promtool and runs a real Prometheus against bridge (tests/test_prometheus.py).
# Installs the package when it is missing and that is possible, without starting the package's
# own Prometheus service (it would take port 9090, bridge's admin port); otherwise says what to do.
set -u

if command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; then
  echo "promtool and prometheus are installed"
  exit 0
fi

if ! command -v apt-get >/dev/null 2>&1 || ! { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
  cat >&2 <<MSG
error: promtool and prometheus are not installed (make test needs them for the alert rules and the
dashboard check). Install them, then run make again:
  Debian/Ubuntu:  sudo apt-get install --no-install-recommends prometheus
  elsewhere:      the prometheus release archive (prometheus and promtool on the PATH)
MSG
  exit 1
fi

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo -n"
echo "installing prometheus (promtool) from the system's packages; its service is not started"
# policy-rc.d answering 101 keeps the package's scripts from starting the service.
POLICY=/usr/sbin/policy-rc.d
ADDED=""
if [ ! -e "$POLICY" ]; then
  $SUDO sh -c "printf '#!/bin/sh\nexit 101\n' > $POLICY && chmod 755 $POLICY" && ADDED=1
fi
install() {
  $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
    prometheus >/dev/null 2>&1
}
install || { $SUDO apt-get update -q >/dev/null 2>&1 && install; }
STATUS=$?
[ -n "$ADDED" ] && $SUDO rm -f "$POLICY"
if [ "$STATUS" != 0 ] || ! command -v promtool >/dev/null 2>&1; then
  echo "error: installing prometheus with apt-get failed; install it yourself and run make again." >&2
  exit 1
fi
echo "promtool and prometheus are installed"
