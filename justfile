# Tributary: every task a person runs. `just` lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

# pip installs nats-server into Python's scripts directory: look there too.
python_scripts := `python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true`
export PATH := env_var('PATH') + ":" + python_scripts

# List the recipes.
default:
    @just --list

# Run the whole pipeline locally with simulated devices (Ctrl-C stops it).
# Installs the servers it needs first when they are missing (Debian/Ubuntu).
dev *ARGS: install-servers
    cargo run -p tributary-stack --bin tributary-dev -- {{ARGS}}

# Run every test (unit, integration, end-to-end on real servers). The service
# binaries are built first: some tests run them as real processes. Installs
# the servers the tests need first when they are missing (Debian/Ubuntu).
test: install-servers
    cargo build --workspace --bins --locked
    cargo test --workspace --locked

# Benchmark the whole pipeline on real servers (release builds); `just bench --help` for options.
bench *ARGS: check-servers
    cargo build --release --locked -p producer -p transformer -p sink -p query-api -p alerter -p tributary-bench
    target/release/tributary-bench {{ARGS}}

# Compare the sink's write shapes on one PostgreSQL (CPU per row, rows/s); `just bench-store --help`.
bench-store *ARGS: check-servers
    cargo build --release --locked -p tributary-bench
    target/release/tributary-store-shapes {{ARGS}}

# The chaos ledger (issue 13): the release pipeline under process kills,
# failpoint exits, server restarts and network faults while it ingests, then
# every event accounted for in one line (`just chaos --help`). Acceptance needs
# at least 200,000 events and 20 faults of every kind: the defaults.
chaos *ARGS: check-servers
    cargo build --release --locked -p producer -p transformer -p sink -p tributary-chaos
    target/release/tributary-chaos --release {{ARGS}}

# Every stream with three replicas (`--nats-cluster`): stream leaders killed
# and nodes frozen (SIGSTOP/SIGCONT) join the faults. Too long for `just test`
# (about 100 s for 4,000 events in debug builds); the defaults as `just chaos`.
# The chaos ledger on a three-node NATS cluster (`just chaos-cluster --help`).
chaos-cluster *ARGS: check-servers
    cargo build --release --locked -p producer -p transformer -p sink -p tributary-chaos
    target/release/tributary-chaos --release --nats-cluster {{ARGS}}

# What decoding costs per row in each payload format (CPU only, no servers).
bench-formats *ARGS:
    cargo build --release --locked -p tributary-bench --bin tributary-format-costs
    target/release/tributary-format-costs {{ARGS}}

# Fuzz one parser of untrusted bytes for a while (items, senml_json,
# senml_cbor, line_protocol, mapped_json, routes, sparkplug, subjects,
# query_params, feed_framing). Needs `cargo install cargo-fuzz` and a nightly
# toolchain; crashes land in fuzz/artifacts/<target>/.
fuzz TARGET="items" SECONDS="60":
    cd fuzz && cargo +nightly fuzz run {{TARGET}} -- -max_total_time={{SECONDS}}

# Fuzz every parser in turn, SECONDS each; one summary line per target.
fuzz-all SECONDS="600":
    cd fuzz && for target in $(cargo +nightly fuzz list); do \
        cargo +nightly fuzz run "$target" -- -max_total_time={{SECONDS}} > "/tmp/fuzz-$target.log" 2>&1 \
            && echo "$target: {{SECONDS}} s, no crash ($(grep -o 'cov: [0-9]*' "/tmp/fuzz-$target.log" | tail -1))" \
            || echo "$target: CRASH, see /tmp/fuzz-$target.log and fuzz/artifacts/$target/"; \
    done

# Formatting and lints, warnings denied.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets --locked -- -D warnings

# Format the code.
fmt:
    cargo fmt --all

# Install nats-server (pinned in deploy/versions.env), PostgreSQL and mosquitto where missing.
install-servers:
    bash .ci/install-servers

# Fail early, with the fix, when a server binary is missing.
[private]
check-servers:
    bash .ci/install-servers --check

# Build the six container images, tributary-<target>:TAG (needs a Docker engine with BuildKit).
images TAG="dev":
    for target in producer transformer sink query-api alerter simulator; do \
        docker build -f docker/Dockerfile --target "$target" -t "tributary-$target:{{TAG}}" . ; \
    done

# Remove `just dev`'s kept server data.
clean-dev:
    rm -rf .dev
