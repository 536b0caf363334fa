#!/usr/bin/env bash
# Build (or find in the cache) kiln's tiny test guest: Debian's cloud kernel, a small initramfs
# that loads the virtio modules, and a 128 MiB ext4 root disk with busybox, dropbear (+ scp,
# dropbearconvert, dropbearkey) and a NoCloud agent (guest/tiny/README.md). Everything comes from
# Debian packages; nothing is mounted and nothing is installed into the host's /boot.
#
# usage: scripts/tiny-guest.sh [--force] [--prune] [-h]
#   --force  rebuild even if the cache has this build
#   --prune  afterwards, delete other cached builds and kernel downloads
#
# Output: ${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}/tiny-guest/<hash>/ holding
#   vmlinuz  initrd.gz  base.qcow2  append.txt (kernel command line, without the seed)
#   manifest.txt (inputs and versions)
# The directory is the LAST line on stdout (progress goes to stderr); tiny-guest/current points at
# it. <hash> covers this script, guest/tiny/ and the exact versions of the kernel, busybox-static,
# dropbear-bin and openssh-client (scp) packages, so a rebuild happens only when one changes. A
# build is made in a temporary directory and renamed into place: a killed build leaves no entry.
# Entries are never modified once made, so overlays may use base.qcow2 as their backing file.
#
# Needs: busybox-static, dropbear-bin, openssh-client, e2fsprogs, qemu-utils, xz-utils, zstd
# (scripts/setup.sh installs them; this script runs it when a tool is missing) and apt package lists
# that know linux-image-cloud-amd64 (the .deb is fetched with `apt-get download`). Root is not
# needed to build.
#
# Boot (the seed may also go on the kernel command line instead of the SMBIOS serial):
#   qemu-system-x86_64 -accel tcg -m 256 -kernel DIR/vmlinuz -initrd DIR/initrd.gz \
#     -append "$(cat DIR/append.txt)" -smbios 'type=1,serial=ds=nocloud;s=http://10.0.2.2:PORT/' \
#     -drive file=OVERLAY.qcow2,if=virtio,format=qcow2 \
#     -netdev user,id=n0,hostfwd=tcp:127.0.0.1:SSHPORT-:22 -device virtio-net-pci,netdev=n0,romfile= \
#     -display none -serial file:console.log -no-reboot
# Fast power-off from SSH: sync; mount -o remount,ro /; poweroff -f   (or: tiny-poweroff)
set -euo pipefail
export LC_ALL=C PATH=$PATH:/usr/sbin:/sbin  # dropbear, mkfs.ext4 and debugfs live in sbin
umask 022

FORCE=0 PRUNE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --prune) PRUNE=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "tiny-guest: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(dirname "$(dirname "$SELF")")
GUEST=$ROOT/guest/tiny
CACHE=${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}/tiny-guest
KMETA=linux-image-cloud-amd64
ROOTFS_SIZE=128M
APPEND='root=/dev/vda console=ttyS0 rw quiet panic=-1'
FORMAT=1  # bump when the output layout changes in a way the file hashes would not show

log() { echo "tiny-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }
[[ -d $GUEST/rootfs && -f $GUEST/initramfs/init ]] || die "guest files not found in $GUEST"

# --- tools (scripts/setup.sh installs what is missing) -----------------------------------------
TOOLS=(busybox dropbear dropbearconvert dropbearkey scp mkfs.ext4 debugfs qemu-img dpkg-deb dpkg-query
  apt-get apt-cache xz zstd gzip flock sha256sum ldd)
missing_tools() { local t; for t in "${TOOLS[@]}"; do command -v "$t" >/dev/null 2>&1 || echo "$t"; done; }
if [[ -n $(missing_tools) ]]; then
  log "missing tools: $(missing_tools | tr '\n' ' ')- running scripts/setup.sh"
  "$ROOT/scripts/setup.sh" >&2 || die "scripts/setup.sh failed"
  [[ -z $(missing_tools) ]] || die "still missing: $(missing_tools | tr '\n' ' ')"
fi
mkdir -p "$CACHE"

# --- inputs and their hash ---------------------------------------------------------------------
# The kernel: resolve the meta package to the versioned image package. apt-cache takes ~1 s on
# machines without apt's binary cache, so remember the answer until the package lists change.
apt_state() {
  stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* /etc/apt/sources.list /etc/apt/sources.list.d/* \
    /etc/apt/preferences /etc/apt/preferences.d/* 2>/dev/null | sha256sum | cut -c1-32
}
resolve_kernel() { # prints "PACKAGE VERSION"
  local state cached dep
  state=$(apt_state)
  cached=$(cat "$CACHE/.kernel-resolved" 2>/dev/null || true)
  if [[ $cached == "$KMETA $state "* ]]; then echo "${cached#"$KMETA $state "}"; return; fi
  dep=$(apt-cache show --no-all-versions "$KMETA" 2>/dev/null | sed -n 's/^Depends: //p' | head -n 1)
  # "linux-image-6.1.0-56-cloud-amd64 (= 6.1.192-2)"
  [[ $dep =~ (linux-image-[^ ,]+)\ \(=\ ([^\)]+)\) ]] || return 1
  echo "$KMETA $state ${BASH_REMATCH[1]} ${BASH_REMATCH[2]}" >"$CACHE/.kernel-resolved.$$"
  mv "$CACHE/.kernel-resolved.$$" "$CACHE/.kernel-resolved"
  echo "${BASH_REMATCH[1]} ${BASH_REMATCH[2]}"
}
if ! kres=$(resolve_kernel); then
  if [[ -e $CACHE/current/manifest.txt ]] && ((!FORCE)); then
    log "warning: cannot resolve $KMETA (no apt lists? run apt-get update); using the cached build"
    readlink -f "$CACHE/current"; exit 0
  fi
  die "cannot resolve $KMETA with apt-cache; run: sudo apt-get update (or scripts/setup.sh)"
fi
read -r KPKG KVERSION <<<"$kres"
KREL=${KPKG#linux-image-}

PKGVERS=$(dpkg-query -W -f='${Package} ${Version}\n' busybox-static dropbear-bin openssh-client 2>/dev/null) ||
  die "busybox-static, dropbear-bin and openssh-client must be installed (scripts/setup.sh)"

inputs() {
  echo "format $FORMAT"
  echo "kernel $KPKG $KVERSION"
  echo "$PKGVERS"
  echo "rootfs $ROOTFS_SIZE"
  echo "append $APPEND"
  # "file HASH  PATH" for the builder's own files (docs excluded), one sha256sum for all.
  (cd "$ROOT" && { echo scripts/tiny-guest.sh; find guest/tiny -type f ! -name '*.md'; } | sort |
    xargs -d '\n' sha256sum | sed 's/^/file /')
}
INPUTS=$(inputs)
HASH=$(sha256sum <<<"$INPUTS" | cut -c1-16)
OUT=$CACHE/$HASH
FILES=(vmlinuz initrd.gz base.qcow2 append.txt manifest.txt)

complete() { local f; for f in "${FILES[@]}"; do [[ -s $1/$f ]] || return 1; done; }
set_current() { # atomic: rename a fresh symlink over the old one
  ln -sfn "$HASH" "$CACHE/.current.$$"
  mv -Tf "$CACHE/.current.$$" "$CACHE/current"
}
prune() {
  local d keep; keep=$(readlink "$CACHE/current" || true)
  for d in "$CACHE"/*/; do
    d=${d%/}; [[ -d $d && ! -L $d && ${d##*/} != "$HASH" && ${d##*/} != "$keep" && ${d##*/} != downloads ]] || continue
    [[ -e $d/manifest.txt ]] || continue  # only our entries
    log "prune: removing ${d##*/}"; chmod -R u+w "$d"; rm -rf "$d"
  done
  find "$CACHE/downloads" -maxdepth 1 -name '*.deb' ! -name "${KPKG}_*" -delete 2>/dev/null || true
  for d in "$CACHE"/.build.*; do  # left by killed builds (we hold the lock: none is running)
    [[ -d $d && $d != "${W:-}" ]] && { chmod -R u+w "$d"; rm -rf "$d"; }
  done
  return 0
}

if ((!FORCE)) && complete "$OUT"; then
  [[ $(readlink "$CACHE/current" 2>/dev/null) == "$HASH" ]] || set_current
  ((PRUNE)) && { exec 9>"$CACHE/.lock"; flock 9; prune; }
  echo "$OUT"; exit 0
fi

# --- build (one at a time per cache) ------------------------------------------------------------
exec 9>"$CACHE/.lock"
flock 9
if ((!FORCE)) && complete "$OUT"; then set_current; echo "$OUT"; exit 0; fi  # built meanwhile
# We hold the lock: any build directory left over is from a killed build.
rm -rf "$CACHE"/.build.* 2>/dev/null || true
T0=$(date +%s%N)
W=$(mktemp -d "$CACHE/.build.$HASH.XXXXXX")
trap 'chmod -R u+w "$W" 2>/dev/null; rm -rf "$W"' EXIT
trap 'exit 130' INT TERM HUP
log "building $HASH in $CACHE (kernel $KPKG $KVERSION)"

# 1. Kernel package: download once (apt verifies it against the signed lists), unpack, take vmlinuz.
mkdir -p "$CACHE/downloads" "$W/dl"
DEB=$(ls "$CACHE/downloads/${KPKG}_${KVERSION#*:}_"*.deb 2>/dev/null | head -n 1 || true)
if [[ -z $DEB ]]; then
  log "downloading $KPKG=$KVERSION"
  sandbox=(); ((EUID == 0)) && sandbox=(-o APT::Sandbox::User=root)
  (cd "$W/dl" && apt-get -q "${sandbox[@]}" download "$KPKG=$KVERSION" >"$W/apt.log" 2>&1) ||
    { cat "$W/apt.log" >&2; die "apt-get download $KPKG=$KVERSION failed"; }
  f=$(ls "$W/dl/"*.deb)
  mv "$f" "$CACHE/downloads/"
  DEB=$CACHE/downloads/${f##*/}
fi
dpkg-deb -x "$DEB" "$W/kpkg"
KDIR=$W/kpkg/lib/modules/$KREL
[[ -f $W/kpkg/boot/vmlinuz-$KREL && -d $KDIR/kernel ]] || die "unexpected layout in $DEB"
mkdir -p "$W/out"
cp "$W/kpkg/boot/vmlinuz-$KREL" "$W/out/vmlinuz"

# 2. Modules: the groups in guest/tiny/modules.conf plus their dependencies, dependencies first.
declare -A MODPATH BUILTIN SEEN
while IFS= read -r p; do
  n=${p##*/}; n=${n%%.ko*}; MODPATH[${n//-/_}]=$p
done < <(find "$KDIR/kernel" -name '*.ko*')
while IFS= read -r p; do
  n=${p##*/}; n=${n%%.ko*}; BUILTIN[${n//-/_}]=1
done < <(cat "$KDIR/modules.builtin" 2>/dev/null || true)
mkdir -p "$W/mods"
ORDER=()
add_module() { # NAME: unpack it and its dependencies into $W/mods, append to ORDER
  local n=${1//-/_} p d
  [[ -n ${SEEN[$n]:-} || -n ${BUILTIN[$n]:-} ]] && return 0
  SEEN[$n]=1
  p=${MODPATH[$n]:-}; [[ -n $p ]] || die "kernel module $n not found in $KPKG"
  case "$p" in
    *.ko.xz) xz -dc "$p" ;; *.ko.zst) zstd -qdc "$p" ;; *.ko.gz) gzip -dc "$p" ;; *) cat "$p" ;;
  esac >"$W/mods/$n.ko"
  for d in $(tr '\0' '\n' <"$W/mods/$n.ko" | sed -n 's/^depends=//p' | tr ',' ' '); do add_module "$d"; done
  ORDER+=("$n")
}
declare -A GROUP
while IFS= read -r line; do
  line=${line%%#*}; [[ $line == *:* ]] || continue
  g=${line%%:*}; g=${g//[[:space:]]/}
  ORDER=()
  for m in ${line#*:}; do add_module "$m"; done
  GROUP[$g]="${ORDER[*]}"
done <"$GUEST/modules.conf"
[[ -n ${GROUP[initramfs]:-} ]] || die "modules.conf has no initramfs group"

# 3. Root filesystem.
R=$W/rootfs
mkdir -p "$R"
cp -R "$GUEST/rootfs/." "$R/"
# Our files first (cp would write through an applet symlink), modes set here, not taken from git.
find "$R" -type d -exec chmod 755 {} +
find "$R" -type f -exec chmod 644 {} +
while IFS= read -r -d '' f; do
  [[ $(head -c 2 "$f") == '#!' ]] && chmod 755 "$f"
done < <(find "$R" -type f -print0)
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,lib,etc/dropbear,proc,sys,dev,run,tmp,var/log,var/tmp,mnt,root/.ssh,newroot}
rmdir "$R/newroot"
chmod 1777 "$R/tmp" "$R/var/tmp"
chmod 700 "$R/root" "$R/root/.ssh"
ln -s ../run/resolv.conf "$R/etc/resolv.conf"
ln -s ../proc/self/mounts "$R/etc/mtab"
install -m 755 "$(command -v busybox)" "$R/bin/busybox"
for a in $(busybox --list-full); do
  [[ -e $R/$a || -L $R/$a ]] || { mkdir -p "$R/$(dirname "$a")"; ln -s /bin/busybox "$R/$a"; }
done
copy_with_libs() { # BINARY DEST: the binary and every library ldd names, at the same paths
  local lib
  install -D -m 755 "$1" "$R$2"
  for lib in $(ldd "$1" | grep -o '/[^ ]*'); do
    [[ -e $R$lib ]] || install -D -m 755 "$(readlink -f "$lib")" "$R$lib"
    echo "$lib" >>"$W/libs"
  done
}
: >"$W/libs"
copy_with_libs "$(command -v dropbear)" /usr/sbin/dropbear
# The NoCloud agent converts host keys from user-data (OpenSSH format) and checks them with these.
copy_with_libs "$(command -v dropbearconvert)" /usr/bin/dropbearconvert
copy_with_libs "$(command -v dropbearkey)" /usr/bin/dropbearkey
copy_with_libs "$(command -v scp)" /usr/bin/scp
if [[ -n ${GROUP[cidata]:-} ]]; then
  mkdir -p "$R/lib/modules/$KREL/tiny"
  : >"$R/lib/modules/$KREL/tiny/cidata.order"
  for m in ${GROUP[cidata]}; do
    [[ " ${GROUP[initramfs]} " == *" $m "* ]] && continue
    cp "$W/mods/$m.ko" "$R/lib/modules/$KREL/tiny/"
    echo "$m" >>"$R/lib/modules/$KREL/tiny/cidata.order"
  done
fi

# 4. initramfs: static busybox, the modules, /init.
I=$W/initramfs
mkdir -p "$I"/{bin,dev,proc,sys,newroot,lib/modules}
install -m 755 "$(command -v busybox)" "$I/bin/busybox"
for a in sh mount umount insmod switch_root sleep cat cut findfs poweroff; do ln -s busybox "$I/bin/$a"; done
install -m 755 "$GUEST/initramfs/init" "$I/init"
for m in ${GROUP[initramfs]}; do cp "$W/mods/$m.ko" "$I/lib/modules/"; echo "$m"; done >"$I/lib/modules/load.order"

# Fixed timestamps (and GNU cpio's --reproducible when it is there) keep the initramfs stable.
EPOCH=${SOURCE_DATE_EPOCH:-1700000000}
find "$R" "$I" -exec touch -h -d "@$EPOCH" {} +
if cpio --version 2>/dev/null | grep -q GNU; then
  (cd "$I" && find . | sort | cpio --quiet -o -H newc -R 0:0 --reproducible | gzip -9n) >"$W/out/initrd.gz"
else
  (cd "$I" && find . | sort | busybox cpio -o -H newc 2>/dev/null | gzip -9n) >"$W/out/initrd.gz"
fi

# 5. Disk: ext4 from the directory (nothing mounted), owned by root, then qcow2.
UUID=$(sha256sum <<<"$HASH" | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
mkfs.ext4 -q -F -b 4096 -L tinyroot -U "$UUID" \
  -E "root_owner=0:0,hash_seed=$UUID" -d "$R" "$W/disk.raw" "$ROOTFS_SIZE" >"$W/mkfs.log" 2>&1 ||
  { cat "$W/mkfs.log" >&2; die "mkfs.ext4 failed"; }
if ((EUID != 0)); then
  # mkfs.ext4 -d copies our uid into the image; make every inode root's.
  (cd "$R" && find . -mindepth 1 | sed 's|^\.||') | while IFS= read -r p; do
    printf 'sif "%s" uid 0\nsif "%s" gid 0\n' "$p" "$p"
  done >"$W/debugfs.cmds"
  debugfs -w -f "$W/debugfs.cmds" "$W/disk.raw" >/dev/null 2>"$W/debugfs.log" ||
    { cat "$W/debugfs.log" >&2; die "debugfs failed"; }
fi
qemu-img convert -f raw -O qcow2 "$W/disk.raw" "$W/out/base.qcow2"

# 6. Command line and manifest.
echo "$APPEND" >"$W/out/append.txt"
{
  echo "# kiln tiny guest $HASH"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) by scripts/tiny-guest.sh on $(uname -n)"
  echo "kernel-release $KREL"
  echo "kernel-deb ${DEB##*/}"
  echo "modules-initramfs ${GROUP[initramfs]}"
  echo "modules-cidata ${GROUP[cidata]:-}"
  echo "rootfs ext4 $ROOTFS_SIZE label=tinyroot uuid=$UUID"
  # dpkg knows a library by its /lib or its /usr/lib path (merged /usr): ask for both.
  echo "libraries $(sort -u "$W/libs" | while read -r l; do echo "$l"; readlink -f "$l"; done |
    xargs -r dpkg -S 2>/dev/null | cut -d: -f1 | sort -u | xargs -r dpkg-query -W -f='${Package}=${Version} ')"
  echo "# inputs (hashed):"
  echo "$INPUTS"
} >"$W/out/manifest.txt"
chmod 444 "$W/out"/*

# 7. Publish atomically.
# An existing entry (--force, or a damaged one) is moved aside first: we hold the lock.
[[ -e $OUT ]] && mv -T "$OUT" "$W/old"
mv -T "$W/out" "$OUT"
set_current
((PRUNE)) && prune
ms=$((($(date +%s%N) - T0) / 1000000))
log "built $HASH in $((ms / 1000)).$((ms % 1000 / 100)) s ($(du -sh "$OUT" | cut -f1))"
echo "$OUT"
