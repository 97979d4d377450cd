#!/usr/bin/env bash
# Make sure the PostgreSQL server binaries (initdb, pg_ctl) are installed for the state-store
# tests, which start their own throwaway cluster (tests/conftest.py). Idempotent and quiet:
# does nothing when the binaries (or CONSORTIUM_TEST_POSTGRES_URL) are already there.
# Installs with apt-get (Debian/Ubuntu), via `sudo -n` when not root.
set -euo pipefail

have_postgres() {
    if [[ -n "${PG_BINDIR:-}" ]]; then
        [[ -x "$PG_BINDIR/initdb" && -x "$PG_BINDIR/pg_ctl" ]]
        return
    fi
    if command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1; then
        return 0
    fi
    # Debian and Ubuntu keep the server binaries off PATH
    compgen -G "${PG_LIB_ROOT:-/usr/lib/postgresql}/*/bin/initdb" >/dev/null
}

if [[ -n "${CONSORTIUM_TEST_POSTGRES_URL:-}" ]] || have_postgres; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "postgres.sh: no apt-get here; install the PostgreSQL server (initdb, pg_ctl)" \
        "or set PG_BINDIR" >&2
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
        echo "postgres.sh: '$*' failed:" >&2
        cat "$log" >&2
        exit 1
    fi
}

echo "postgres.sh: installing the PostgreSQL server (apt-get)" >&2
quietly apt-get update -qq
# postgresql-common first, so that installing the server creates no 'main' cluster to start
quietly apt-get install -y -qq --no-install-recommends postgresql-common
conf=/etc/postgresql-common/createcluster.conf
if [[ -f "$conf" ]]; then
    quietly sed -ri 's/^#?\s*create_main_cluster\s*=.*/create_main_cluster = false/' "$conf"
fi
quietly apt-get install -y -qq --no-install-recommends postgresql

if ! have_postgres; then
    echo "postgres.sh: installed postgresql but found no initdb/pg_ctl" >&2
    exit 1
fi
