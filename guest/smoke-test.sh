#!/usr/bin/env bash
# End-to-end check of the tiny guest (scripts/tiny-guest.sh) with real QEMU:
#   1. NoCloud seed over HTTP (SMBIOS serial) without host keys -> root SSH with an ed25519 key;
#      dropbear makes its host key on first use (-R) -> write a file -> fast power-off ->
#      qemu-img convert of the overlay
#   2. boot the converted image without a seed -> the file, the login key and the host key are
#      still there -> fast power-off
#   3. boot an overlay of the converted image with a seed whose user-data carries an ed25519 host
#      key (ssh_keys, as kiln pins it) -> dropbear presents exactly that key and no other (strict
#      known_hosts check, ssh-keyscan), the old host key is gone (ssh_deletekeys), and the private
#      key is in no world-readable file and not on the console -> fast power-off.
# Prints timings (boot to SSH, power-off) and cleans up everything it started.
#
# usage: guest/smoke-test.sh [--accel tcg|kvm] [--rng] [--keep]   (KILN_CACHE_DIR is honoured)
#   --rng   add -device virtio-rng-pci (SSH is ready ~1 s sooner under TCG)
set -euo pipefail
ACCEL=tcg KEEP=0 EXTRA=()
while (($#)); do
  case "$1" in
    --accel) ACCEL=$2; shift ;;
    --rng) EXTRA+=(-device virtio-rng-pci) ;;
    --keep) KEEP=1 ;;
    *) echo "usage: $0 [--accel tcg|kvm] [--rng] [--keep]" >&2; exit 2 ;;
  esac
  shift
done
ROOT=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
for t in qemu-system-x86_64 qemu-img ssh ssh-keygen ssh-keyscan python3; do
  command -v "$t" >/dev/null || { echo "smoke: missing $t (scripts/setup.sh)" >&2; exit 1; }
done

DIR=$("$ROOT/scripts/tiny-guest.sh" | tail -n 1)
T=$(mktemp -d -t kiln-smoke.XXXXXX)
PIDS=()
cleanup() {
  local p
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
  if ((KEEP)); then echo "smoke: kept $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

now() { date +%s%N; }
secs() { local ms=$((($2 - $1) / 1000000)); printf '%d.%02d' $((ms / 1000)) $((ms % 1000 / 10)); }
freeport() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

ssh-keygen -q -t ed25519 -N '' -C kiln-smoke -f "$T/key"
mkdir "$T/seed"
printf '#cloud-config\nssh_authorized_keys:\n  - %s\n' "$(cat "$T/key.pub")" >"$T/seed/user-data"
printf 'instance-id: smoke-1\nlocal-hostname: kiln-smoke\n' >"$T/seed/meta-data"
HTTP_PORT=$(freeport)
python3 -m http.server --bind 127.0.0.1 --directory "$T/seed" "$HTTP_PORT" >"$T/http.log" 2>&1 &
PIDS+=($!)

SSH_PORT=
SSH=(ssh -i "$T/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o BatchMode=yes -o ConnectTimeout=2)
QEMU_PID=
fail() { echo "smoke: $*" >&2; exit 1; }
# host_keys TYPES: the host keys of those types (rsa,ecdsa,ed25519) the guest offers, "TYPE BASE64"
# per line, sorted. (With -R dropbear makes each asked-for type on the spot; rsa is slow under TCG.)
host_keys() {
  ssh-keyscan -T 5 -t "$1" -p "$SSH_PORT" 127.0.0.1 2>/dev/null | awk '{ print $2, $3 }' | sort
}
# strict_ssh KNOWN_HOSTS: log in checking the host key against that file only.
strict_ssh() {
  ssh -i "$T/key" -o StrictHostKeyChecking=yes -o UserKnownHostsFile="$1" -o GlobalKnownHostsFile=/dev/null \
    -o LogLevel=ERROR -o BatchMode=yes -o ConnectTimeout=5 -p "$SSH_PORT" root@127.0.0.1 true 2>/dev/null
}

boot() { # DISK LOG [extra qemu args...]: start QEMU, wait for SSH; sets QEMU_PID and SECS
  local disk=$1 log=$2 t0 t1; shift 2
  SSH_PORT=$(freeport)
  t0=$(now)
  qemu-system-x86_64 -accel "$ACCEL" -m 256 -kernel "$DIR/vmlinuz" -initrd "$DIR/initrd.gz" \
    -append "$(cat "$DIR/append.txt")" "$@" \
    -drive "file=$disk,if=virtio,format=qcow2" \
    -netdev "user,id=n0,hostfwd=tcp:127.0.0.1:$SSH_PORT-:22" -device virtio-net-pci,netdev=n0,romfile= \
    "${EXTRA[@]}" -display none -serial "file:$log" -no-reboot 2>"$log.stderr" &
  QEMU_PID=$!
  PIDS+=("$QEMU_PID")
  until "${SSH[@]}" -p "$SSH_PORT" root@127.0.0.1 true 2>/dev/null; do
    kill -0 "$QEMU_PID" 2>/dev/null || { echo "smoke: QEMU exited early:" >&2; cat "$log.stderr" "$log" >&2; exit 1; }
    (($(now) - t0 < 120000000000)) || { echo "smoke: no SSH after 120 s:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.1
  done
  t1=$(now)
  SECS=$(secs "$t0" "$t1")
}
poweroff() { # fast power-off; sets SECS to the time until QEMU has exited
  local t0 i=0; t0=$(now)
  "${SSH[@]}" -p "$SSH_PORT" root@127.0.0.1 'sync; mount -o remount,ro /; poweroff -f' 2>/dev/null || true
  while kill -0 "$QEMU_PID" 2>/dev/null; do
    ((++i < 300)) || { echo "smoke: QEMU still running 30 s after poweroff" >&2; exit 1; }
    sleep 0.1
  done
  wait "$QEMU_PID" 2>/dev/null || true
  SECS=$(secs "$t0" "$(now)")
}

qemu-img create -q -f qcow2 -b "$DIR/base.qcow2" -F qcow2 "$T/overlay.qcow2"
boot "$T/overlay.qcow2" "$T/console1.log" -smbios "type=1,serial=ds=nocloud;s=http://10.0.2.2:$HTTP_PORT/"
b1=$SECS
out=$("${SSH[@]}" -p "$SSH_PORT" root@127.0.0.1 'echo hi; tar --help >/dev/null 2>&1; sha256sum /etc/hostname;
  echo "PATH=$PATH"; hostname; for t in sh tar cat sha256sum mkdir chmod sync poweroff mount; do command -v $t >/dev/null || echo "missing $t"; done
  mkdir -p /srv && echo "kiln was here" >/srv/marker && chmod 600 /srv/marker && cloud-init status --long')
echo "$out" | sed 's/^/smoke: guest: /' >&2
grep -q '^hi$' <<<"$out" && grep -q '^kiln-smoke$' <<<"$out" && ! grep -q '^missing' <<<"$out" ||
  { echo "smoke: unexpected output" >&2; exit 1; }
echo "data" | "${SSH[@]}" -p "$SSH_PORT" root@127.0.0.1 'cat >/srv/upload && sha256sum /srv/upload' >/dev/null
hk0=$(host_keys ecdsa,ed25519)  # both get made now: boot 3 checks that they are deleted
[[ $hk0 == *ecdsa-sha2-*ssh-ed25519* ]] || fail "host keys without ssh_keys: '$hk0' (want ecdsa and ed25519)"
args=$("${SSH[@]}" -p "$SSH_PORT" root@127.0.0.1 'cat /run/dropbear.args')
[[ $args == -R ]] || fail "dropbear options without ssh_keys: '$args' (want -R)"
poweroff; p1=$SECS
grep 'tiny: init done' "$T/console1.log" | sed 's/^/smoke: console: /' >&2

t0=$(now)
qemu-img convert -O qcow2 "$T/overlay.qcow2" "$T/converted.qcow2"
c=$(secs "$t0" "$(now)")

boot "$T/converted.qcow2" "$T/console2.log"  # no seed: the key must have been baked in
b2=$SECS
marker=$("${SSH[@]}" -p "$SSH_PORT" root@127.0.0.1 'cat /srv/marker')
[[ $marker == "kiln was here" ]] || { echo "smoke: marker lost: '$marker'" >&2; exit 1; }
hk=$(host_keys ed25519)
[[ $(grep ssh-ed25519 <<<"$hk") == "$(grep ssh-ed25519 <<<"$hk0")" ]] ||
  fail "the ed25519 host key changed on a boot without a seed"
poweroff; p2=$SECS

# 3. A host key from user-data, as kiln pins it (cloud-init's cc_ssh contract).
ssh-keygen -q -t ed25519 -N '' -C kiln-smoke-host -f "$T/hostkey"
{
  printf '#cloud-config\nssh_authorized_keys:\n  - %s\n' "$(cat "$T/key.pub")"
  printf 'ssh_deletekeys: true\nssh_genkeytypes: []\nssh_keys:\n  ed25519_private: |\n'
  sed 's/^/    /' "$T/hostkey"
  printf '  ed25519_public: %s\n' "$(cat "$T/hostkey.pub")"
} >"$T/seed/user-data"
printf 'instance-id: smoke-2\nlocal-hostname: kiln-smoke-pinned\n' >"$T/seed/meta-data"
qemu-img create -q -f qcow2 -b "$T/converted.qcow2" -F qcow2 "$T/overlay3.qcow2"
boot "$T/overlay3.qcow2" "$T/console3.log" -smbios "type=1,serial=ds=nocloud;s=http://10.0.2.2:$HTTP_PORT/"
b3=$SECS
want=$(awk '{ print $1, $2 }' "$T/hostkey.pub")
hk=$(host_keys rsa,ecdsa,ed25519)
[[ $hk == "$want" ]] || fail "host keys offered with ssh_keys: '$hk' (want only '$want')"
echo "[127.0.0.1]:$SSH_PORT $want" >"$T/known_hosts"
strict_ssh "$T/known_hosts" || fail "ssh with StrictHostKeyChecking=yes and only the seed's host key failed"
echo "[127.0.0.1]:$SSH_PORT $(grep ssh-ed25519 <<<"$hk0")" >"$T/known_hosts.old"
! strict_ssh "$T/known_hosts.old" || fail "the old host key is still accepted"
# The private key's text must be in no world-readable file, only in the 0600 copy of user-data
# under the 0700 /run/nocloud, and never on the console. Line 5 of an OpenSSH ed25519 key holds
# the private part (line 2 is the same for every key).
secret=$(sed -n 5p "$T/hostkey")
out=$("${SSH[@]}" -p "$SSH_PORT" root@127.0.0.1 "cat /run/dropbear.args; ls /etc/dropbear;
  stat -c '%a %n' /etc/dropbear/* /run/nocloud /etc/hostname /etc/hosts /root/.ssh/authorized_keys
  hostname; cloud-init status --long
  for d in / /run /dev/shm; do find \$d -xdev -type f -exec grep -lF '$secret' {} + 2>/dev/null; done |
    sort -u | while read -r f; do stat -c 'secret in %a %n' \"\$f\"; done")
echo "$out" | sed 's/^/smoke: guest: /' >&2
grep -qx -- '-r /etc/dropbear/dropbear_ed25519_host_key' <<<"$out" || fail "dropbear does not run with -r on the seed's key"
[[ $(grep -c '^dropbear_' <<<"$out") == 1 ]] || fail "other host keys are left in /etc/dropbear"
grep -qx '600 /etc/dropbear/dropbear_ed25519_host_key' <<<"$out" || fail "the host key file is not mode 600"
grep -qx '700 /run/nocloud' <<<"$out" || fail "/run/nocloud is not mode 700"
grep -qx '644 /etc/hosts' <<<"$out" && grep -qx '644 /etc/hostname' <<<"$out" || fail "/etc/hosts or /etc/hostname is not mode 644"
grep -qx 'kiln-smoke-pinned' <<<"$out" || fail "hostname not set from the second seed"
[[ $(grep '^secret in ' <<<"$out") == "secret in 600 /run/nocloud/user-data" ]] ||
  fail "the private host key is somewhere else than /run/nocloud/user-data (0600)"
poweroff; p3=$SECS
sed -n '3,/-----END/{/-----END/d;p}' "$T/hostkey" >"$T/hostkey.lines"
! grep -qF -f "$T/hostkey.lines" "$T/console3.log" || fail "the private host key is on the console"
grep 'tiny: init done' "$T/console3.log" | sed 's/^/smoke: console: /' >&2

echo "smoke: ok (accel $ACCEL${EXTRA[*]:+, ${EXTRA[*]}}, guest $DIR, load $(cut -d' ' -f1-3 /proc/loadavg))"
echo "smoke: boot to SSH ${b1}s (seeded overlay), ${b2}s (converted image, no seed), ${b3}s (seeded, pinned host key)"
echo "smoke: power-off ${p1}s, ${p2}s and ${p3}s; qemu-img convert ${c}s"
