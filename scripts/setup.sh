#!/usr/bin/env bash
# Idempotent OS setup for kiln on Debian 12 (bookworm): installs the Debian packages that kiln's
# build, tests and quickstart need (QEMU, the tiny and cloud test guests' ingredients, ssh
# client, ...).
#
# usage: scripts/setup.sh [--bench] [--check] [--dry-run] [-v]
#   --bench    also install the benchmark baselines: packer (Debian's 1.6.6) and hyperfine
#   --check    install nothing; list what is missing and exit 1 if anything is
#   --dry-run  show what would be installed (apt-get -s); changes nothing, needs no root
#   -v         say what is already present, too
#
# Fast and silent when everything is present (dpkg-query only; no apt-get update). Otherwise it
# runs `apt-get update` once, installs everything missing in one apt-get call and prints one line
# per package installed. Needs root only when something must be installed.
#
# QEMU: some machines come with a newer qemu-utils (a 10.x backport) that conflicts with
# bookworm's qemu-system-x86 (7.2). We always install qemu-system-x86 and qemu-utils at the SAME
# version (--allow-downgrades), which brings a backported qemu-utils back to bookworm's.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive LC_ALL=C

BENCH=0 CHECK=0 DRY=0 VERBOSE=0
for arg in "$@"; do
  case "$arg" in
    --bench) BENCH=1 ;;
    --check) CHECK=1 ;;
    --dry-run) DRY=1 ;;
    -v|--verbose) VERBOSE=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "setup: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

# package -> why (one word is enough; shown with -v / --check)
PKGS=(
  busybox-static:tiny-guest  dropbear-bin:tiny-guest  e2fsprogs:tiny-guest
  xz-utils:tiny-guest  zstd:tiny-guest  gzip:tiny-guest  cpio:tiny-guest  util-linux:flock
  debootstrap:cloud-guest  debian-archive-keyring:cloud-guest  grub-pc-bin:cloud-guest
  grub-common:cloud-guest  fdisk:cloud-guest
  openssh-client:tests  python3:tests
  gcc:build  libc6-dev:build  pkg-config:build
)
((BENCH)) && PKGS+=(packer:bench hyperfine:bench)
QEMU_PKGS=(qemu-system-x86 qemu-utils)

say() { echo "setup: $*" >&2; }

names=("${QEMU_PKGS[@]}")
for p in "${PKGS[@]}"; do names+=("${p%%:*}"); done

# One dpkg-query for everything: "name status source-version version".
declare -A STATUS SRCVER VER
while IFS=$'\t' read -r n st sv v; do
  n=${n%%:*}; STATUS[$n]=$st; SRCVER[$n]=$sv; VER[$n]=$v
done < <(dpkg-query -W -f='${Package}\t${db:Status-Abbrev}\t${source:Version}\t${Version}\n' "${names[@]}" 2>/dev/null || true)
installed() { [[ ${STATUS[$1]:-} == ii* ]]; }

missing=()
for p in "${PKGS[@]}"; do
  n=${p%%:*}
  if installed "$n"; then ((VERBOSE)) && say "present: $n ${VER[$n]}"
  else missing+=("$n"); ((CHECK)) && say "missing: $n (${p#*:})"; fi
done

# QEMU is fine when both are installed and built from the same source version.
qemu_ok=0
if installed qemu-system-x86 && installed qemu-utils && [[ ${SRCVER[qemu-system-x86]} == "${SRCVER[qemu-utils]}" ]]; then
  qemu_ok=1; ((VERBOSE)) && say "present: qemu-system-x86 + qemu-utils ${VER[qemu-system-x86]}"
elif ((CHECK)); then
  say "qemu: qemu-system-x86 '${VER[qemu-system-x86]:-none}' / qemu-utils '${VER[qemu-utils]:-none}' need installing at one version"
fi

# The guest builders download the cloud kernel (tiny) and resolve every package (cloud) with apt,
# so the package lists must exist (a fresh container often has none). A glob, not apt-cache: that
# takes ~1 s here.
lists_ok=1
compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || lists_ok=0
((CHECK)) && ((!lists_ok)) && say "no apt package lists (needs apt-get update)"

if ((qemu_ok)) && ((lists_ok)) && ((${#missing[@]} == 0)); then
  ((VERBOSE)) && say "nothing to do"
  command -v cargo >/dev/null 2>&1 || { ((VERBOSE)) && say "note: no cargo on PATH; kiln needs Rust >= 1.89 (rustup), not Debian's rustc"; }
  exit 0
fi
((CHECK)) && exit 1

if ((EUID != 0)) && ((!DRY)); then
  want=("${missing[@]}"); ((qemu_ok)) || want+=("${QEMU_PKGS[@]}")
  say "need root to install: ${want[*]:-(apt lists only)}"
  say "run: sudo $0${*:+ $*}"
  exit 1
fi

LOG=$(mktemp -t kiln-setup.XXXXXX.log)
trap 'rm -f "$LOG"' EXIT
APT=(apt-get -q -y -o Dpkg::Use-Pty=0 -o DPkg::Options::=--force-confdef -o DPkg::Options::=--force-confold)
run() { # run a command quietly, show its output if it fails
  "$@" >>"$LOG" 2>&1 || { say "failed: $*"; tail -n 25 "$LOG" >&2; exit 1; }
}

if ((DRY)); then
  say "dry run: would run apt-get update, then install: ${missing[*]} $( ((qemu_ok)) || echo "${QEMU_PKGS[*]} (one version)")"
else
  say "apt-get update"
  # A broken third-party source must not stop us: apt-get update still refreshes the others.
  "${APT[@]}" update >>"$LOG" 2>&1 || say "warning: apt-get update reported errors (continuing): $(grep -E '^(E|W):' "$LOG" | head -n 1)"
fi

targets=("${missing[@]}")
if ((!qemu_ok)); then
  # Candidate of the emulator (never a backport unless the admin pinned one), and qemu-utils at
  # exactly that version; fall back to the ENV-NOTES spelling if that version is not offered.
  v=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2; exit}')
  [[ -n $v && $v != "(none)" ]] || { say "no installable qemu-system-x86 in the apt sources"; exit 1; }
  if apt-cache madison qemu-utils | awk -F' *[|] *' -v v="$v" '$2 == v {f=1} END {exit !f}'; then
    targets+=("qemu-system-x86=$v" "qemu-utils=$v")
  else
    targets+=(qemu-system-x86 qemu-utils/bookworm)
  fi
fi

if ((DRY)); then
  "${APT[@]}" -s install --no-install-recommends --allow-downgrades "${targets[@]}" 2>&1 \
    | grep -E '^(Inst|Remv|Conf |E:)' | grep -v '^Conf' >&2 || true
  exit 0
fi

run "${APT[@]}" install --no-install-recommends --allow-downgrades "${targets[@]}"

# One line per package we asked for, with the version now installed.
for t in "${targets[@]}"; do
  n=${t%%[=/]*}
  v=$(dpkg-query -W -f='${Version}' "$n" 2>/dev/null || true)
  [[ -n $v ]] || { say "failed: $n is still not installed"; exit 1; }
  say "installed $n $v"
done
if ((!qemu_ok)); then
  a=$(dpkg-query -W -f='${source:Version}' qemu-system-x86) b=$(dpkg-query -W -f='${source:Version}' qemu-utils)
  [[ $a == "$b" ]] || { say "qemu-system-x86 ($a) and qemu-utils ($b) still differ"; exit 1; }
fi
