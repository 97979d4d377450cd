#!/usr/bin/env bash
# Make sure Chromium is installed for the dashboard's browser tests
# (tests/control/test_dashboard_browser.py drives it with Playwright, whose own browser
# download is not used). Idempotent and quiet: does nothing when the browser is already
# there (at CONSORTIUM_CHROMIUM, default /usr/bin/chromium). Installs Debian's `chromium`
# package with apt-get, via `sudo -n` when not root.
set -euo pipefail

browser="${CONSORTIUM_CHROMIUM:-/usr/bin/chromium}"
if [[ -x "$browser" ]]; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: no apt-get here; install Chromium and set CONSORTIUM_CHROMIUM" >&2
    exit 1
fi

as_root=()
if [[ "$(id -u)" -ne 0 ]]; then
    as_root=(sudo -n)  # -n: fail instead of waiting for a password
fi
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
quietly() {
    if ! ${as_root[@]+"${as_root[@]}"} env DEBIAN_FRONTEND=noninteractive "$@" >"$log" 2>&1; then
        echo "chromium.sh: '$*' failed:" >&2
        cat "$log" >&2
        exit 1
    fi
}

echo "chromium.sh: installing Chromium (apt-get install chromium)" >&2
quietly apt-get update -qq
quietly apt-get install -y -qq --no-install-recommends chromium

if [[ ! -x "$browser" ]]; then
    echo "chromium.sh: installed chromium but found no $browser" \
        "(Ubuntu's chromium is a snap stub: use Debian's package, or set CONSORTIUM_CHROMIUM)" >&2
    exit 1
fi
