#!/usr/bin/env bash
# First README command: build HA-OSCAR and run the live demo (a real cluster
# in network namespaces on this machine, a failure injected and timed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    exec sudo --preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME "$0" "$@"
fi
scripts/prereqs.sh
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust 1.89 or newer (https://rustup.rs), then run $0 again" >&2
    exit 1
fi
cargo build --release --quiet --bin haoscar
exec target/release/haoscar demo "$@"
