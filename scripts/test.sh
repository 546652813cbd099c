#!/usr/bin/env bash
# Second README command: formatting, lints, unit tests and the lab
# integration tests (which build real clusters in network namespaces, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ] && [ -z "${HAOSCAR_SKIP_LAB:-}" ]; then
    exec sudo --preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME "$0" "$@"
fi
[ -n "${HAOSCAR_SKIP_LAB:-}" ] || scripts/prereqs.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
echo "== cargo test"
cargo test --workspace "$@"
