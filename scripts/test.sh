#!/usr/bin/env bash
# The whole test suite — exactly what CI runs (.ci/run calls this script).
# Installs what it needs on a fresh Debian machine (idempotent), builds the tiny and the cloud
# test guests (cached; building the cloud one needs root), then: rustfmt, clippy, a bounded fuzz
# run of the config loader, and every test (real QEMU guests included) under cargo-nextest.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "system packages"
scripts/setup.sh

step "tiny test guest"
KILN_TINY_GUEST=$(scripts/tiny-guest.sh | tail -n 1)
export KILN_TINY_GUEST
echo "guest: $KILN_TINY_GUEST" >&2

step "cloud test guest"
KILN_CLOUD_GUEST=$(scripts/cloud-guest.sh | tail -n 1)
export KILN_CLOUD_GUEST
echo "guest: $KILN_CLOUD_GUEST" >&2

if ! command -v cargo-nextest >/dev/null 2>&1; then
  step "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "fuzz the config loader (${KILN_FUZZ_SECONDS:-60} s)"
scripts/fuzz.sh "${KILN_FUZZ_SECONDS:-60}"

step "tests"
cargo nextest run --workspace --profile ci
