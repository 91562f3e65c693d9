# shellcheck shell=bash
# Shared set-up for scripts/serve and scripts/test: installs what is missing,
# idempotently, on Debian or Ubuntu. Sourced, not run.

# Packages the build needs (ffmpeg-next's bindings) and the tools tests use to
# make fixtures and check outputs.
# shellcheck disable=SC2034 # used by the scripts that source this file
ANB_BUILD_PACKAGES=(
  pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavfilter-dev libavdevice-dev
  libswscale-dev libswresample-dev libavutil-dev
)
# chromium (Debian's) runs the web app's browser tests; playwright-core never downloads a browser.
# shellcheck disable=SC2034 # used by the scripts that source this file
ANB_TEST_PACKAGES=(ffmpeg python3-venv curl postgresql redis-server shellcheck chromium)

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf '\033[31merror: %s\033[0m\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root (or sudo) to run: $*"
  fi
}

# Installs the Debian packages among "$@" that are not installed yet. Never
# upgrades what is there: upgrading a running PostgreSQL breaks it.
ANB_APT_CHANGED=0
install_packages() {
  local missing=()
  for pkg in "$@"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || die "apt-get not found: install ${missing[*]} by hand"
  say "installing ${missing[*]}"
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]} failed"
  ANB_APT_CHANGED=1
}

ensure_rust() {
  command -v cargo >/dev/null || die "cargo not found: install Rust with rustup first"
  if command -v rustup >/dev/null; then
    cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
    cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
  fi
}

# The schemathesis release scripts/schemathesis runs.
ANB_SCHEMATHESIS_VERSION=4.32.5
# The Locust release capacity/run drives its load with.
ANB_LOCUST_VERSION=2.47.0

# The S3- and SQS-compatible test server and the Python test tools, in a
# virtual environment inside the repository (git-ignored).
ensure_python_tools() {
  local venv="$ANB_ROOT/.venv"
  if [ ! -x "$venv/bin/moto_server" ] || [ ! -x "$venv/bin/cfn-lint" ]; then
    say "installing the S3/SQS test server (moto) and cfn-lint into .venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (is python3-venv installed?)"
    # Pinned: a newer cfn-lint may start rejecting what this one accepts.
    "$venv/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.*' 'cfn-lint==1.58.0' \
      || die "pip install into .venv failed"
  fi
  # The OpenAPI conformance run (scripts/schemathesis). Pinned: its checks
  # and its generator change between releases.
  if [ "$("$venv/bin/schemathesis" --version 2>/dev/null)" != "schemathesis, version $ANB_SCHEMATHESIS_VERSION" ]; then
    say "installing schemathesis $ANB_SCHEMATHESIS_VERSION into .venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$ANB_SCHEMATHESIS_VERSION" \
      || die "pip install schemathesis failed"
  fi
  # Plots of the worker-scaling simulation and of the capacity runs.
  if ! "$venv/bin/python" -c 'import matplotlib' 2>/dev/null; then
    "$venv/bin/pip" install -q --disable-pip-version-check 'matplotlib==3.*' || die "pip install matplotlib failed"
  fi
  # The load generator of the capacity runs (capacity/run). Pinned: its
  # spawning and its per-request events change between releases.
  if [ "$("$venv/bin/locust" --version 2>/dev/null | awk '{print $2}')" != "$ANB_LOCUST_VERSION" ]; then
    say "installing locust $ANB_LOCUST_VERSION into .venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "locust==$ANB_LOCUST_VERSION" \
      || die "pip install locust failed"
  fi
}

# Node.js (20 or newer) and the browser tests' npm dependencies, installed
# exactly as e2e/package-lock.json pins them into e2e/node_modules (git-ignored).
ensure_browser_test_tools() {
  local chromium="${ANB_E2E_CHROMIUM:-/usr/bin/chromium}"
  [ -x "$chromium" ] || die "the browser tests need Debian's chromium at $chromium (apt-get install chromium, or set ANB_E2E_CHROMIUM)"
  "$chromium" --version >/dev/null 2>&1 || die "$chromium does not run ($chromium --version failed)"
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    install_packages nodejs npm
  fi
  local major; major=$(node -p 'process.versions.node.split(".")[0]')
  [ "$major" -ge 20 ] || die "the browser tests need Node.js 20 or newer (found $(node --version))"
  local e2e="$ANB_ROOT/e2e" stamp="$ANB_ROOT/e2e/node_modules/.installed-from"
  local wanted; wanted=$(sha256sum "$e2e/package-lock.json" | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    say "installing the browser tests' npm packages (playwright-core)"
    (cd "$e2e" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error) \
      || die "npm ci in e2e/ failed"
    echo "$wanted" >"$stamp"
  fi
}

# --- services the tests talk to -------------------------------------------------
ANB_STARTED=()

pg_cluster_version() { find /etc/postgresql -mindepth 1 -maxdepth 1 -printf '%f\n' 2>/dev/null | sort -V | tail -n 1; }

ensure_postgres() {
  local url="${ANB_TEST_POSTGRES_URL}"
  if [ "$ANB_APT_CHANGED" = 1 ] && pg_isready -q -h 127.0.0.1 2>/dev/null; then
    # Packages changed under a running server: restart it so it loads matching libraries.
    say "restarting PostgreSQL after package changes"
    as_root pg_ctlcluster --skip-systemctl-redirect "$(pg_cluster_version)" main restart || true
  fi
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    local v; v=$(pg_cluster_version)
    [ -n "$v" ] || die "PostgreSQL is not installed (no cluster under /etc/postgresql)"
    say "starting PostgreSQL $v"
    as_root pg_ctlcluster --skip-systemctl-redirect "$v" main start || die "could not start PostgreSQL $v"
    ANB_STARTED+=("postgres:$v")
  fi
  for _ in $(seq 1 60); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.5; done
  pg_isready -q -h 127.0.0.1 -p 5432 || die "PostgreSQL does not answer on 127.0.0.1:5432"
  if ! psql "$url" -Atqc 'select 1' >/dev/null 2>&1; then
    # A stock install asks for a password over TCP: give the superuser the one the test URL uses.
    say "setting the test password of the postgres role"
    as_root su postgres -c "psql -qc \"alter user postgres password 'postgres'\"" >/dev/null \
      || die "cannot log in to PostgreSQL as $url"
    psql "$url" -Atqc 'select 1' >/dev/null || die "cannot log in to PostgreSQL as $url"
  fi
}

ensure_redis() {
  if ! redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; then
    command -v redis-server >/dev/null || die "redis-server is not installed"
    say "starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
      --logfile "$ANB_ROOT/.test-services/redis.log" || die "could not start Redis"
    ANB_STARTED+=("redis")
  fi
  for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG && return 0; sleep 0.25; done
  die "Redis does not answer on 127.0.0.1:6379"
}

# A three-master Redis Cluster on 127.0.0.1 for the cluster run of the queue's
# conformance suite: ports ANB_REDIS_CLUSTER_PORTS (space- or comma-separated,
# default 7101 7102 7103), data under .test-services/redis-cluster/<port>.
# Nodes already answering are reused; the cluster is formed only when no slot is
# assigned yet (a restarted node rejoins from its nodes.conf).
ensure_redis_cluster() {
  local ports port dir nodes=() base="$ANB_ROOT/.test-services/redis-cluster"
  local list="${ANB_REDIS_CLUSTER_PORTS:-7101 7102 7103}"
  read -r -a ports <<<"${list//,/ }"
  [ ${#ports[@]} -ge 3 ] || die "a Redis Cluster needs three masters (ANB_REDIS_CLUSTER_PORTS=${ports[*]})"
  for port in "${ports[@]}"; do
    nodes+=("127.0.0.1:$port")
    redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG && continue
    command -v redis-server >/dev/null || die "redis-server is not installed"
    dir="$base/$port"
    mkdir -p "$dir"
    say "starting Redis Cluster node 127.0.0.1:$port"
    redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$dir" \
      --cluster-enabled yes --cluster-config-file nodes.conf --cluster-node-timeout 5000 \
      --save '' --appendonly no --logfile "$dir/redis.log" || die "could not start Redis on port $port"
    ANB_STARTED+=("redis:$port")
  done
  for port in "${ports[@]}"; do
    for _ in $(seq 1 40); do redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG && break; sleep 0.25; done
    redis-cli -h 127.0.0.1 -p "$port" ping 2>/dev/null | grep -q PONG || die "Redis does not answer on 127.0.0.1:$port"
  done
  if redis-cli -h 127.0.0.1 -p "${ports[0]}" cluster info | grep -q '^cluster_slots_assigned:0'; then
    say "forming the Redis Cluster ${nodes[*]}"
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$base/create.log" 2>&1 \
      || die "redis-cli --cluster create failed (see .test-services/redis-cluster/create.log)"
  fi
  for _ in $(seq 1 120); do
    local formed=1
    for port in "${ports[@]}"; do
      redis-cli -h 127.0.0.1 -p "$port" cluster info | grep -q '^cluster_state:ok' || formed=0
    done
    [ "$formed" = 1 ] && return 0
    sleep 0.5
  done
  die "the Redis Cluster on ${nodes[*]} is not ok (remove .test-services/redis-cluster and stop its nodes to start afresh)"
}

ensure_moto_running() {
  local endpoint="$ANB_TEST_AWS_ENDPOINT"
  # Already answering (e.g. started by hand): tests use fresh names, so reuse it.
  curl -fsS -o /dev/null "$endpoint/moto-api/" 2>/dev/null && return 0
  local port="${endpoint##*:}"
  say "starting the S3/SQS test server on 127.0.0.1:$port"
  "$ANB_ROOT/.venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$ANB_ROOT/.test-services/moto.log" 2>&1 &
  ANB_STARTED+=("moto:$!")
  for _ in $(seq 1 120); do curl -fsS -o /dev/null "$endpoint/moto-api/" 2>/dev/null && return 0; sleep 0.5; done
  die "the S3/SQS test server did not start (see .test-services/moto.log)"
}

stop_started_services() {
  for svc in "${ANB_STARTED[@]}"; do
    case "$svc" in
      moto:*) kill "${svc#moto:}" 2>/dev/null || true ;;
      redis) redis-cli -h 127.0.0.1 -p 6379 shutdown nosave >/dev/null 2>&1 || true ;;
      redis:*) redis-cli -h 127.0.0.1 -p "${svc#redis:}" shutdown nosave >/dev/null 2>&1 || true ;;
      postgres:*) as_root pg_ctlcluster --skip-systemctl-redirect "${svc#postgres:}" main stop || true ;;
    esac
  done
}
