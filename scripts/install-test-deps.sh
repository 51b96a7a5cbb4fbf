#!/usr/bin/env bash
# Installs the Debian packages that tests drive for real. Idempotent; a no-op when present.
set -euo pipefail
needed=()
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || needed+=(pgbouncer)
# Headless browser for tests/test_browser.py (Playwright drives it; no browser download).
[ -x /usr/bin/chromium ] || needed+=(chromium)
if [ ${#needed[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-test-deps: not root; tests needing ${needed[*]} will be skipped with a reason" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
# The Debian service would take port 6432; tests start their own PgBouncer.
if command -v systemctl >/dev/null 2>&1; then systemctl disable --now pgbouncer >/dev/null 2>&1 || true; fi
pkill -x pgbouncer >/dev/null 2>&1 || true
echo "install-test-deps: installed ${needed[*]}"
