#!/usr/bin/env bash
# Install Debian's Chromium for the browser tests (tests/browser_harness.py).
# Idempotent: does nothing when /usr/bin/chromium already exists.
# Never downloads a browser through Playwright (`playwright install` is not used).
# CHROMIUM (default /usr/bin/chromium, where the browser tests look) names the browser checked for; the tests of
# this script (tests/test_entry_points.py) point it elsewhere.
set -euo pipefail

CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

if [ -x "$CHROMIUM" ]; then
    echo "install_browser: $CHROMIUM present ($("$CHROMIUM" --version 2>/dev/null || echo 'version unknown'))"
    exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install_browser: $CHROMIUM missing and not root (no sudo); install Debian 'chromium' manually" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
$SUDO apt-get install -y --no-install-recommends chromium

if [ ! -x "$CHROMIUM" ]; then
    echo "install_browser: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "install_browser: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
