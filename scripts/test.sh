#!/usr/bin/env bash
# Second README command: formatting, lints, unit tests and the lab
# integration tests (which build real clusters in network namespaces, as root).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -ne 0 ] && [ -z "${HAOSCAR_SKIP_LAB:-}" ]; then
    exec sudo --preserve-env=PATH,HOME,CARGO_HOME,RUSTUP_HOME "$0" "$@"
fi
[ -n "${HAOSCAR_SKIP_LAB:-}" ] || scripts/prereqs.sh
if ! command -v cargo >/dev/null 2>&1; then
    echo "cargo not found: install Rust 1.89 or newer (https://rustup.rs), then run $0 again" >&2
    exit 1
fi
if cargo fmt --version >/dev/null 2>&1; then
    echo "== cargo fmt --check"
    cargo fmt --all -- --check
else
    echo "== cargo fmt: not installed, skipped (rustup component add rustfmt)"
fi
if cargo clippy --version >/dev/null 2>&1; then
    echo "== cargo clippy"
    cargo clippy --workspace --all-targets --quiet -- -D warnings
else
    echo "== cargo clippy: not installed, skipped (rustup component add clippy)"
fi
echo "== cargo test"
cargo test --workspace "$@"
