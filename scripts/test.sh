#!/usr/bin/env bash
# The README's test command: installs what the tests need, builds once, runs every test.
#
#   scripts/test.sh                 # everything
#   scripts/test.sh -E 'binary(browser)'   # extra arguments go to `cargo nextest run`
#
# Idempotent and quick when everything is already there. Meant for a Debian machine
# (run as root, or with sudo available): it installs Debian's chromium and
# chromium-driver for the browser tests, postgresql for the PostgreSQL backend,
# openssh-server for the SSH tests, a Python
# venv with ansible-core for the playbook differential tests, checks that Docker
# answers, builds the workspace, starts one throwaway PostgreSQL cluster for the run
# (scripts/test-postgres.sh) and runs the suite with cargo-nextest (configuration in
# .config/nextest.toml). Without extra arguments, the end-to-end tests of foundation,
# fleet and business then run a second time with the control plane on PostgreSQL
# (DYNSERV_TEST_BACKEND=postgres); the exit code is non-zero when either pass fails.
# `DYNSERV_TEST_BACKEND=postgres scripts/test.sh -E 'binary(fleet)'` runs a chosen set
# on PostgreSQL only.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"

say() { printf '\n==> %s\n' "$*"; }
warn() { printf '\n!!! %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        warn "need root to run: $*"
        return 1
    fi
}

# ---- Debian packages: Chromium and chromedriver (browser tests), cron, PostgreSQL, sshd ----

missing_packages=()
command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ] || missing_packages+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing_packages+=(chromium-driver)
# ansible-core's cron module needs the crontab program even to edit cron files (the
# cron differential test).
command -v crontab >/dev/null 2>&1 || missing_packages+=(cron)
# The npm differential test runs the real npm (community.general.npm drives it).
command -v npm >/dev/null 2>&1 || missing_packages+=(npm)
# The PostgreSQL backend's tests run a throwaway cluster (scripts/test-postgres.sh).
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || missing_packages+=(postgresql)
# The SSH tests (tests/tests/ssh.rs) start a real OpenSSH server on a loopback port.
[ -x /usr/sbin/sshd ] || missing_packages+=(openssh-server)
# The docker_image differential test runs ansible-core's module with /usr/bin/python3,
# which needs Debian's requests (the Docker SDK's transport).
/usr/bin/python3 -c 'import requests' >/dev/null 2>&1 || missing_packages+=(python3-requests)
# Certificate renewal is tested on a faked wall clock (libfaketime), months ahead.
[ -f /usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1 ] || missing_packages+=(faketime)
if [ "${#missing_packages[@]}" -gt 0 ]; then
    say "installing ${missing_packages[*]} from Debian (browser, playbook and PostgreSQL tests)"
    # Wait for another apt/dpkg run to release its lock instead of failing at once.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
        install -y --no-install-recommends "${missing_packages[@]}"
else
    say "chromium, chromedriver, crontab, PostgreSQL, sshd and faketime present"
fi

# ---- ansible-core in .venv-ansible (playbook differential tests) ---------------------

if [ ! -x .venv-ansible/bin/ansible-playbook ]; then
    say "creating .venv-ansible with ansible-core (playbook differential tests)"
    python3 -m venv .venv-ansible
    .venv-ansible/bin/pip install --quiet --disable-pip-version-check ansible-core
else
    say "ansible-core present in .venv-ansible"
fi
# The collections the differential tests compare against (ansible.posix,
# community.general, community.postgresql) come from PyPI's `ansible` package; 12.x
# keeps ansible-core 2.19, the version the fixtures were written with.
if ! compgen -G '.venv-ansible/lib/python3*/site-packages/ansible_collections/community/general' >/dev/null; then
    say "installing the ansible package 12.x into .venv-ansible (collections for the differential tests)"
    .venv-ansible/bin/pip install --quiet --disable-pip-version-check 'ansible>=12.3,<13'
else
    say "Ansible collections present in .venv-ansible"
fi
# deb822_repository imports python-debian and postgresql_user psycopg2 on the managed
# host (the venv's Python is the differential tests' module interpreter).
if ! .venv-ansible/bin/python -c 'import debian.deb822, psycopg2' >/dev/null 2>&1; then
    say "installing python-debian and psycopg2-binary into .venv-ansible (deb822_repository, postgresql_user tests)"
    .venv-ansible/bin/pip install --quiet --disable-pip-version-check python-debian psycopg2-binary
fi
# Keep the venv out of git without touching the repository's .gitignore.
[ -f .venv-ansible/.gitignore ] || echo '*' >.venv-ansible/.gitignore

# ---- moto in .venv-moto (off-site backup tests: a real S3-compatible server) ----------

if [ ! -x .venv-moto/bin/moto_server ]; then
    say "creating .venv-moto with moto[server] (off-site backup tests)"
    python3 -m venv .venv-moto
    .venv-moto/bin/pip install --quiet --disable-pip-version-check 'moto[server]'
else
    say "moto present in .venv-moto"
fi
[ -f .venv-moto/.gitignore ] || echo '*' >.venv-moto/.gitignore

# ---- Docker (agent tests on private networks, compose backups) -----------------------

if docker info >/dev/null 2>&1; then
    say "Docker answers ($(docker info --format '{{.ServerVersion}}' 2>/dev/null || echo '?'))"
else
    if command -v dockerd >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ] && ! pgrep -x dockerd >/dev/null 2>&1; then
        say "Docker is installed but not running: starting dockerd (log: /tmp/dockerd.log)"
        nohup dockerd >/tmp/dockerd.log 2>&1 &
        for _ in $(seq 1 30); do
            docker info >/dev/null 2>&1 && break
            sleep 1
        done
    fi
    if docker info >/dev/null 2>&1; then
        say "Docker answers"
    else
        warn "Docker is not reachable (docker info fails): the tests that start containers \
will fail. Install Docker Engine (Debian: apt-get install docker.io) and start it \
(systemctl start docker, or dockerd &), then run $0 again."
    fi
fi

# ---- busybox-static and the Docker test image (compose backup tests) ------------------

# No image can be pulled: the compose tests run an image imported from a static
# busybox root file system (packaging/test-image.sh).
if ! [ -x /bin/busybox ] || ldd /bin/busybox >/dev/null 2>&1; then
    say "installing busybox-static from Debian (Docker test image)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
        install -y --no-install-recommends busybox-static
fi
command -v docker-compose >/dev/null 2>&1 || docker compose version >/dev/null 2>&1 || {
    say "installing docker-compose from Debian (compose backup tests)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 \
        install -y --no-install-recommends docker-compose
}
if docker info >/dev/null 2>&1; then
    packaging/test-image.sh || warn "building the Docker test image failed"
fi

# ---- cargo-nextest -------------------------------------------------------------------

if ! cargo nextest --version >/dev/null 2>&1; then
    say "installing cargo-nextest from crates.io (once; takes a few minutes)"
    cargo install --locked cargo-nextest
fi

# ---- one TLS stack -------------------------------------------------------------------

# The workspace uses rustls with ring only; a dependency that brings OpenSSL or aws-lc
# (often through a crate's default TLS feature) fails the run here, before the build.
for crate in openssl-sys aws-lc-sys; do
    if cargo tree --workspace --target all --invert "$crate" >/dev/null 2>&1; then
        warn "$crate is in the dependency tree; turn off the default features that pull it:"
        cargo tree --workspace --target all --invert "$crate" | head -n 30 >&2
        exit 1
    fi
done
say "dependency tree: no OpenSSL, no aws-lc"

# ---- build once, then run everything -------------------------------------------------

# The end-to-end tests start the real dynserv and dynserv-agent binaries from
# target/debug, so the whole workspace is built before any test runs.
say "building the workspace (cargo build --workspace --all-targets)"
cargo build --workspace --all-targets

profile=default
if [ "${CI:-}" = "true" ]; then
    profile=ci
fi

# ---- one throwaway PostgreSQL for the whole run --------------------------------------

# The harness (tests/src/postgres.rs) makes a fresh database in it for each test that
# needs one; stopped and removed when this script ends, whatever the tests' result.
pg_dir=""
stop_test_postgres() {
    if [ -n "$pg_dir" ]; then
        scripts/test-postgres.sh stop "$pg_dir" || warn "stopping the test PostgreSQL in $pg_dir failed"
        pg_dir=""
    fi
}
trap stop_test_postgres EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
pg_vars="$(scripts/test-postgres.sh start)"
while IFS='=' read -r key value; do
    case "$key" in
    DYNSERV_TEST_DATABASE_URL) export DYNSERV_TEST_DATABASE_URL="$value" ;;
    DYNSERV_TEST_PG_DIR) pg_dir="$value" ;;
    esac
done <<<"$pg_vars"
[ -n "$pg_dir" ] && [ -n "${DYNSERV_TEST_DATABASE_URL:-}" ] || {
    warn "scripts/test-postgres.sh start printed no cluster: $pg_vars"
    exit 1
}
say "PostgreSQL for the tests runs at $DYNSERV_TEST_DATABASE_URL (data and log in $pg_dir)"

# ---- the tests -----------------------------------------------------------------------

say "running the tests (cargo nextest run --workspace --no-fail-fast, profile $profile)"
status=0
cargo nextest run --workspace --no-fail-fast --profile "$profile" "$@" || status=$?

# The end-to-end tests once more with the control plane on PostgreSQL. Extra arguments
# choose the tests by hand, so then only the first pass runs.
if [ "$#" -eq 0 ]; then
    say "running the end-to-end tests on PostgreSQL (DYNSERV_TEST_BACKEND=postgres, profile $profile)"
    pg_status=0
    # --workspace, as in the first pass: the same feature set, so nothing is rebuilt.
    DYNSERV_TEST_BACKEND=postgres cargo nextest run --workspace --no-fail-fast \
        --profile "$profile" -E 'binary(foundation) | binary(fleet) | binary(business) | binary(alerts) | binary(rollouts) | binary(live) | binary(ca_rotation) | binary(inventory) | binary(drift)' || pg_status=$?
    if [ "$pg_status" -ne 0 ]; then
        warn "the end-to-end tests on PostgreSQL failed (exit $pg_status); the cluster's log ends with:"
        tail -n 20 "$pg_dir/postgres.log" >&2 || true
        [ "$status" -ne 0 ] || status=$pg_status
    fi
fi
if [ "$status" -ne 0 ]; then
    warn "tests failed (exit $status)"
fi
exit "$status"
