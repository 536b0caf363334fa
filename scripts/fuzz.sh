#!/usr/bin/env bash
# Fuzz kiln-config's loader (`load_str`) for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]      # default 60; time spent fuzzing, after the build
#
# Installs cargo-fuzz when it is missing, builds the `config` target in fuzz/ and runs it
# with libFuzzer. Exits non-zero when the target crashes (panic, sanitizer report, timeout or
# out-of-memory); the reproducer is then in fuzz/artifacts/config/ and can be replayed with
# `cargo fuzz run config <file>` from fuzz/ (with RUSTC_BOOTSTRAP=1).
#
# Only a stable toolchain exists here. cargo-fuzz passes nightly-only flags (-Zsanitizer=…);
# RUSTC_BOOTSTRAP=1 lets stable rustc accept them, and AddressSanitizer works that way.
# KILN_FUZZ_SANITIZER=none skips the sanitizer (faster, still catches panics).
set -euo pipefail

seconds="${1:-60}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -eq 0 ]; then
    echo "usage: $0 [SECONDS]   (a positive number of seconds, default 60)" >&2
    exit 2
fi
sanitizer="${KILN_FUZZ_SANITIZER:-address}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz.sh: installing cargo-fuzz" >&2
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
cd "$root/fuzz"
mkdir -p corpus/config

cargo fuzz build --sanitizer "$sanitizer" config

# corpus/config collects new inputs (ignored by git); seeds/config holds the committed seeds.
cargo fuzz run --sanitizer "$sanitizer" config corpus/config seeds/config -- \
    -max_total_time="$seconds" \
    -dict=config.dict \
    -max_len=8192 \
    -timeout=10 \
    -rss_limit_mb=2048 \
    -print_final_stats=1
echo "fuzz.sh: no crash in ${seconds}s" >&2
