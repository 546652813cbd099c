#!/usr/bin/env bash
# First README command: build HA-OSCAR and run the live demo (a real cluster
# in network namespaces on this machine, a failure injected and timed).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ]; then
    exec sudo --preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME "$0" "$@"
fi
scripts/prereqs.sh
cargo build --release --quiet --bin haoscar
exec target/release/haoscar demo "$@"
