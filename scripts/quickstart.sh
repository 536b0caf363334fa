#!/usr/bin/env bash
# The quickstart: installs what it needs (idempotent), builds kiln and the tiny test guest,
# then bakes examples/quickstart with `kiln build` and prints where the image is.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
guest=$(scripts/tiny-guest.sh | tail -n 1)
cargo build --release --quiet --bin kiln
kiln=$PWD/target/release/kiln

"$kiln" -C examples/quickstart build --force --var "guest_dir=$guest" "$@"
echo
echo "image and manifest: examples/quickstart/output/tiny/"
ls -l examples/quickstart/output/tiny/
