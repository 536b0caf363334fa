#!/usr/bin/env bash
# Build (or find in the cache) kiln's cloud test guest: a real cloud-init disk image like Debian's
# official "genericcloud" one (guest/cloud/README.md). Debian 12 bookworm, linux-image-cloud-amd64,
# systemd, cloud-init 22.4 from bookworm, openssh-server, sudo; GRUB boots it from an MBR disk
# (BIOS); cloud-init makes the default user `debian` on first boot; no SSH host keys, an empty
# machine-id and `cloud-init clean --logs` state. Everything comes from the Debian mirror the host's
# apt sources name; nothing on the host is mounted and nothing is installed into the host's /boot.
#
# usage: scripts/cloud-guest.sh [--force] [--prune] [-h]
#   --force  rebuild the image (the cached root filesystem and .debs are reused)
#   --prune  afterwards, delete other cached images, root filesystems and unused .debs
#
# Output: ${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}/cloud-guest/<hash>/ holding
#   base.qcow2 (2 GiB disk: MBR, GRUB, one ext4 partition at 1 MiB; zlib-compressed qcow2)
#   manifest.txt (every package version in the image, the disk layout, the hashed inputs)
# The directory is the LAST line on stdout (progress goes to stderr); cloud-guest/current points at
# it. <hash> covers this script, the exact versions of every package the image gets (resolved from
# the host's apt lists, so `apt-get update` + a changed package means a rebuild) and the host's
# debootstrap, GRUB, e2fsprogs and qemu-utils versions. Also cached: the .debs (debs/) and the
# finished root filesystem (rootfs/<key>/), so a change that only touches the disk assembly
# rebuilds in ~30 s instead of ~4 min. A build is made in a temporary directory and renamed into
# place: a killed build leaves no entry. Entries are never modified once made (read-only), so
# overlays may use base.qcow2 as their backing file.
#
# Needs root to build (debootstrap and chroot; finding a cached image does not), the host's apt
# lists for bookworm (apt-get update) and the mirror. Tools: debootstrap, grub-pc-bin, fdisk,
# e2fsprogs, qemu-utils (scripts/setup.sh installs them; this script runs it when one is missing).
# The chroot's processes run in their own mount and PID namespaces (unshare): the /proc they need is
# mounted only there, so no mount can outlive the build, however it ends.
#
# Boot (disk boot, no -kernel; kiln passes the seed in the SMBIOS serial):
#   qemu-system-x86_64 -accel tcg -m 1024 -smp 2 \
#     -smbios 'type=1,serial=ds=nocloud-net;s=http://10.0.2.2:PORT/' \
#     -drive file=OVERLAY.qcow2,if=virtio,format=qcow2 -device virtio-rng-pci \
#     -netdev user,id=n0,hostfwd=tcp:127.0.0.1:SSHPORT-:22 -device virtio-net-pci,netdev=n0 \
#     -display none -serial file:console.log
# then `ssh -p SSHPORT debian@127.0.0.1` with the key from user-data (~70-120 s under TCG).
set -euo pipefail
export LC_ALL=C PATH=$PATH:/usr/sbin:/sbin
umask 022

FORCE=0 PRUNE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --prune) PRUNE=1 ;;
    -h|--help) sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
    *) echo "cloud-guest: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(dirname "$(dirname "$SELF")")
CACHE=${KILN_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kiln}/cloud-guest
SUITE=bookworm
# What Debian's genericcloud image is made of, less what only other clouds need. cloud-init's own
# dependencies (python3, isc-dhcp-client, ...) come with it; `--no-install-recommends` keeps out
# the rest. ifupdown: bookworm's cloud-init renders the network as /etc/network/interfaces.d.
PACKAGES=(linux-image-cloud-amd64 systemd systemd-sysv udev dbus libpam-systemd cloud-init
  cloud-guest-utils openssh-server sudo ifupdown isc-dhcp-client netbase e2fsprogs)
DISK_MIB=2048  # like the official image; cloud-init's growpart/resizefs grow it on bigger disks
PART_START=2048  # sectors: the partition starts at 1 MiB; GRUB's core image lives before it
CMDLINE='ro console=tty0 console=ttyS0,115200n8'  # ttyS0 last: it becomes /dev/console
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
FORMAT=1  # bump when the output layout changes in a way the hashed inputs would not show

log() { echo "cloud-guest: $*" >&2; }
die() { log "error: $*"; exit 1; }

# --- tools (scripts/setup.sh installs what is missing) -----------------------------------------
TOOLS=(debootstrap unshare chroot mke2fs e2fsck debugfs sfdisk grub-mkimage qemu-img apt-get
  dpkg-query flock sha256sum)
missing_tools() { local t; for t in "${TOOLS[@]}"; do command -v "$t" >/dev/null 2>&1 || echo "$t"; done; }
if [[ -n $(missing_tools) || ! -f /usr/lib/grub/i386-pc/boot.img || ! -f $KEYRING ]]; then
  log "missing tools: $(missing_tools | tr '\n' ' ')- running scripts/setup.sh"
  "$ROOT/scripts/setup.sh" >&2 || die "scripts/setup.sh failed"
  [[ -z $(missing_tools) ]] || die "still missing: $(missing_tools | tr '\n' ' ')"
fi
mkdir -p "$CACHE"
CACHE=$(cd "$CACHE" && pwd)  # absolute: the chroot and unshare get paths inside it

# --- inputs and their hash ---------------------------------------------------------------------
apt_state() {
  stat -c '%n %s %Y' /var/lib/apt/lists/*_Packages* /var/lib/apt/lists/*Release \
    /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null | sha256sum | cut -c1-32
}
# The apt sources: the host's Debian ones for $SUITE (main archive, -updates, -security), as apt
# sees them whatever the file format: "SITE RELEASE COMPONENT LISTFILE" per index. apt takes ~1 s
# to say, so the answer is kept until the lists or the sources change.
index_targets() {
  local cached=$CACHE/.targets-$(apt_state)
  [[ -s $cached ]] && { cat "$cached"; return; }
  apt-get indextargets --format '$(CODENAME) $(SITE) $(RELEASE) $(COMPONENT) $(FILENAME)' \
    'Created-By: Packages' 'Origin: Debian' 2>/dev/null |
    awk -v s="$SUITE" '$1 == s || index($1, s "-") == 1 {print $2, $3, $4, $5}' | sort >"$CACHE/.targets.$$" || true
  if [[ -s $CACHE/.targets.$$ ]]; then
    rm -f "$CACHE"/.targets-*; mv "$CACHE/.targets.$$" "$cached"; cat "$cached"
  else
    rm -f "$CACHE/.targets.$$"
  fi
}
TARGETS=$(index_targets)
# "deb SITE RELEASE COMPONENTS" lines, the list files, and the main archive for debootstrap.
SOURCES=$(awk '{c[$1 " " $2] = c[$1 " " $2] " " $3} END {for (k in c) print "deb " k c[k]}' <<<"$TARGETS" | sort)
LISTS=$(awk '{print $4}' <<<"$TARGETS")
MIRROR=$(awk -v s="$SUITE" '$2 == s {print $1; exit}' <<<"$TARGETS")

# Every package the image will hold, with its version, resolved by apt from the host's lists as an
# install onto an empty system: what debootstrap's minbase takes (priority required, apt) plus
# PACKAGES. ~3 s, so the answer is kept until the lists or the request change.
resolve() {
  local key cached status srcs
  key=$(printf '%s\n' "$(apt_state)" "$SOURCES" "${PACKAGES[*]}" | sha256sum | cut -c1-32)
  cached=$CACHE/.resolved-$key
  [[ -s $cached ]] && { cat "$cached"; return; }
  status=$(mktemp) srcs=$(mktemp)
  echo "$SOURCES" >"$srcs"
  # usr-is-merged: debootstrap merges /usr itself, so the image has it rather than usrmerge.
  apt-get -s -q -o Dir::State::status="$status" -o Dir::Etc::sourcelist="$srcs" \
    -o Dir::Etc::sourceparts=/nonexistent -o Dir::Etc::preferences=/dev/null \
    -o Dir::Etc::preferencesparts=/nonexistent install --no-install-recommends \
    '?priority(required)' apt usr-is-merged "${PACKAGES[@]}" 2>"$status.err" |
    sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1 \2/p' | sort >"$CACHE/.resolving.$$" || true
  rm -f "$status" "$srcs"
  if [[ ! -s $CACHE/.resolving.$$ ]]; then
    rm -f "$CACHE/.resolving.$$"; cat "$status.err" >&2; rm -f "$status.err"; return 1
  fi
  rm -f "$status.err" "$CACHE"/.resolved-*
  mv "$CACHE/.resolving.$$" "$cached"
  cat "$cached"
}
if [[ -z $MIRROR ]] || ! RESOLVED=$(resolve); then
  if [[ -e $CACHE/current/manifest.txt ]] && ((!FORCE)); then
    log "warning: cannot resolve the $SUITE packages (no apt lists? run apt-get update); using the cached build"
    readlink -f "$CACHE/current"; exit 0
  fi
  [[ -n $MIRROR ]] || die "the host's apt sources have no Debian $SUITE entry with package lists (see /etc/apt/sources.list*; then apt-get update)"
  die "apt cannot resolve the image's packages from the host's lists; run: apt-get update (or scripts/setup.sh)"
fi
grep -q '^linux-image-cloud-amd64 ' <<<"$RESOLVED" || die "no linux-image-cloud-amd64 in the apt lists"
HOSTVERS=$(dpkg-query -W -f='${Package} ${Version}\n' debootstrap grub-pc-bin e2fsprogs qemu-utils 2>/dev/null) ||
  die "debootstrap, grub-pc-bin, e2fsprogs and qemu-utils must be installed (scripts/setup.sh)"

# The root filesystem: debootstrap minbase, then apt inside the chroot. Its cache key covers this
# function's own text, so editing anything outside it (the disk assembly) does not redo it.
in_chroot() { # DIR COMMAND...: run in DIR with a private /proc that dies with the command
  local r=$1; shift
  unshare --mount --propagation private --pid --fork --kill-child --mount-proc="$r/proc" \
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive \
    chroot "$r" "$@"
}
build_rootfs() { # DIR LOG
  local r=$1 logf=$2 f
  mkdir -p "$CACHE/debs"
  # debootstrap mounts /proc and /sys in the target itself; its own namespaces keep them there.
  unshare --mount --propagation private --pid --fork --kill-child \
    debootstrap --variant=minbase --components=main --keyring="$KEYRING" --cache-dir="$CACHE/debs" \
    "$SUITE" "$r" "$MIRROR" >>"$logf" 2>&1 || { tail -n 30 "$logf" >&2; die "debootstrap failed (log above)"; }

  # apt inside sees the same sources and the same lists as the resolution above, so it installs
  # exactly the versions that were hashed.
  echo "$SOURCES" >"$r/etc/apt/sources.list"
  rm -rf "$r/var/lib/apt/lists"/*
  mkdir -p "$r/var/lib/apt/lists/partial"
  for f in $LISTS; do
    cp "$f" "$r/var/lib/apt/lists/"
    cp "${f%_"${f#*_dists_*_}"}"_*Release* "$r/var/lib/apt/lists/" 2>/dev/null || true
  done
  ln -f "$CACHE/debs"/*.deb "$r/var/cache/apt/archives/" 2>/dev/null || true
  printf '#!/bin/sh\n# no services start inside the image build\nexit 101\n' >"$r/usr/sbin/policy-rc.d"
  chmod 755 "$r/usr/sbin/policy-rc.d"
  cp /etc/resolv.conf "$r/etc/resolv.conf"
  # initramfs-tools' default (zstd) is not installed; say so instead of a warning per kernel.
  mkdir -p "$r/etc/initramfs-tools/conf.d"
  echo 'COMPRESS=gzip' >"$r/etc/initramfs-tools/conf.d/compress"
  local apt=(apt-get -q -y -o Dpkg::Use-Pty=0 -o Acquire::Retries=3)
  if ! in_chroot "$r" "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}" >>"$logf" 2>&1; then
    # Most likely the host's lists are older than the mirror, which no longer has a .deb they
    # name: take the mirror's lists instead (the manifest records what was installed).
    log "warning: apt-get install failed with the host's lists (old? run apt-get update); retrying with the mirror's"
    { in_chroot "$r" "${apt[@]}" update && in_chroot "$r" "${apt[@]}" install --no-install-recommends "${PACKAGES[@]}"; } \
      >>"$logf" 2>&1 || { tail -n 30 "$logf" >&2; die "apt-get install in the chroot failed (log above)"; }
  fi
  ln -f "$r/var/cache/apt/archives"/*.deb "$CACHE/debs/" 2>/dev/null || true

  # Make it a golden image: nothing of this build or this host, nothing that must be unique.
  in_chroot "$r" cloud-init clean --logs >>"$logf" 2>&1
  in_chroot "$r" apt-get clean >>"$logf" 2>&1
  rm -f "$r/usr/sbin/policy-rc.d" "$r"/etc/ssh/ssh_host_*
  rm -rf "$r/var/lib/apt/lists"/* "$r"/var/cache/apt/*.bin "$r"/tmp/* "$r"/var/tmp/* \
    "$r"/var/log/{bootstrap.log,dpkg.log,alternatives.log,apt/*} "$r"/var/cache/debconf/*-old \
    "$r"/var/lib/dpkg/*-old "$r"/root/.bash_history
  mkdir -p "$r/var/lib/apt/lists/partial"
  : >"$r/etc/machine-id"  # empty: systemd makes a new one at first boot
  ln -sf /etc/machine-id "$r/var/lib/dbus/machine-id"
  rm -f "$r/etc/resolv.conf"  # dhclient writes it at boot
  : >"$r/var/lib/dpkg/available"
  # As Debian's genericcloud image has them: cloud-init names the host from meta-data and keeps
  # /etc/hosts in step (else sudo cannot resolve the new name); the system locale is C.UTF-8
  # (else cloud-init's locale module tries to make en_US.UTF-8 and fails).
  echo debian >"$r/etc/hostname"
  printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\nff02::1\t\tip6-allnodes\nff02::2\t\tip6-allrouters\n' \
    >"$r/etc/hosts"
  echo 'manage_etc_hosts: true' >"$r/etc/cloud/cloud.cfg.d/01_debian_cloud.cfg"
  echo 'LANG=C.UTF-8' >"$r/etc/default/locale"
  [[ -f $r/vmlinuz && -f $r/initrd.img ]] || die "the kernel package made no /vmlinuz and /initrd.img"
}
ROOTFS_INPUTS=$(
  echo "suite $SUITE"
  echo "$SOURCES"
  echo "packages ${PACKAGES[*]}"
  grep '^debootstrap ' <<<"$HOSTVERS"
  echo "$RESOLVED" | sed 's/^/deb /'
  declare -f in_chroot build_rootfs
)
RKEY=$(sha256sum <<<"$ROOTFS_INPUTS" | cut -c1-16)

INPUTS=$(
  echo "format $FORMAT"
  echo "rootfs $RKEY"
  echo "disk ${DISK_MIB}MiB msdos start=$PART_START ext4"
  echo "cmdline $CMDLINE"
  echo "$HOSTVERS" | sed 's/^/host /'
  echo "file $(sha256sum <"$SELF" | cut -c1-64)  scripts/cloud-guest.sh"
)
HASH=$(sha256sum <<<"$INPUTS" | cut -c1-16)
OUT=$CACHE/$HASH
FILES=(base.qcow2 manifest.txt)

complete() { local f; for f in "${FILES[@]}"; do [[ -s $1/$f ]] || return 1; done; }
set_current() { # atomic: rename a fresh symlink over the old one
  ln -sfn "$HASH" "$CACHE/.current.$$"
  mv -Tf "$CACHE/.current.$$" "$CACHE/current"
}
prune() {
  local d keep; keep=$(readlink "$CACHE/current" || true)
  for d in "$CACHE"/*/; do
    d=${d%/}; [[ -d $d && ! -L $d && ${d##*/} != "$HASH" && ${d##*/} != "$keep" ]] || continue
    [[ -e $d/manifest.txt ]] || continue  # only our entries (not debs/, rootfs/)
    log "prune: removing image ${d##*/}"; chmod -R u+w "$d"; rm -rf "$d"
  done
  for d in "$CACHE"/rootfs/*/; do
    d=${d%/}; [[ -d $d && ${d##*/} != "$RKEY" ]] || continue
    log "prune: removing root filesystem ${d##*/}"; rm -rf "$d"
  done
  if [[ -s $CACHE/rootfs/$RKEY/packages.txt ]]; then  # keep the .debs the current rootfs is made of
    local deb p v; local -A want=()
    while IFS='=' read -r p v; do want[${p}_${v//:/%3a}]=1; done <"$CACHE/rootfs/$RKEY/packages.txt"
    for deb in "$CACHE"/debs/*.deb; do
      p=${deb##*/}; p=${p%_*.deb}  # NAME_VERSION (epoch as %3a, as apt and debootstrap name them)
      [[ -e $deb && -z ${want[$p]:-} ]] && rm -f "$deb"
    done
  fi
  for d in "$CACHE"/.build.*; do  # left by killed builds (we hold the lock: none is running)
    [[ -d $d && $d != "${W:-}" ]] && rm -rf "$d"
  done
  return 0
}

if ((!FORCE)) && complete "$OUT"; then
  [[ $(readlink "$CACHE/current" 2>/dev/null) == "$HASH" ]] || set_current
  ((PRUNE)) && { exec 9>"$CACHE/.lock"; flock 9; prune; }
  echo "$OUT"; exit 0
fi

# --- build (one at a time per cache) ------------------------------------------------------------
((EUID == 0)) || die "building the image needs root (debootstrap, chroot); run: sudo $0 $*"
exec 9>"$CACHE/.lock"
flock 9
if ((!FORCE)) && complete "$OUT"; then set_current; echo "$OUT"; exit 0; fi  # built meanwhile
# We hold the lock: any build directory left over is from a killed build. (Its chroot processes,
# if any outlived it, held the lock too, so they are gone.)
rm -rf "$CACHE"/.build.* 2>/dev/null || true
T0=$(date +%s%N)
W=$(mktemp -d "$CACHE/.build.$HASH.XXXXXX")
trap 'rm -rf "$W"' EXIT
trap 'exit 130' INT TERM HUP
log "building $HASH in $CACHE ($SUITE from $MIRROR)"

# 1. The root filesystem, from the cache or built (~3-5 min cold, ~2 min with the .debs cached).
RDIR=$CACHE/rootfs/$RKEY
if [[ ! -d $RDIR/root ]]; then
  log "root filesystem $RKEY: debootstrap $SUITE, then apt-get install ${PACKAGES[*]}"
  mkdir -p "$W/rootfs"
  build_rootfs "$W/rootfs/root" "$W/build.log"
  dpkg-query --admindir="$W/rootfs/root/var/lib/dpkg" -W -f='${Package}=${Version}\n' >"$W/rootfs/packages.txt"
  mkdir -p "$CACHE/rootfs"
  mv -T "$W/rootfs" "$RDIR"
  ms=$((($(date +%s%N) - T0) / 1000000))
  log "root filesystem $RKEY ready after $((ms / 1000)) s ($(du -sh "$RDIR/root" | cut -f1))"
else
  log "root filesystem $RKEY from the cache"
fi

# 2. This image's tree: hard links to the cached rootfs (nothing in it is written: the files we
# add are unlinked first) plus /etc/fstab and GRUB's files, which name the filesystem's UUID.
R=$W/root
cp -al "$RDIR/root" "$R"
UUID=$(sha256sum <<<"$HASH" | sed -E 's/^(.{8})(.{4})(.{4})(.{4})(.{12}).*/\1-\2-\3-\4-\5/')
DISKID=0x$(sha256sum <<<"disk $HASH" | cut -c1-8)
put() { rm -f "$1"; cat >"$1"; }  # never write through a hard link into the cache
put "$R/etc/fstab" <<EOF
# <file system> <mount point> <type> <options> <dump> <pass>
UUID=$UUID / ext4 rw,discard,errors=remount-ro,x-systemd.growfs 0 1
EOF
# GRUB as grub-install would leave it, but without grub-pc in the image: the modules, and a
# config that boots the /vmlinuz and /initrd.img links the kernel package maintains (a kernel
# upgraded in a bake boots next time without update-grub).
mkdir -p "$R/boot/grub/i386-pc"
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst "$R/boot/grub/i386-pc/"
put "$R/boot/grub/grub.cfg" <<EOF
# Written by kiln's scripts/cloud-guest.sh (there is no grub-pc in this image to regenerate it).
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
insmod part_msdos
insmod ext2
search --no-floppy --fs-uuid --set=root $UUID
menuentry 'Debian GNU/Linux 12 (bookworm)' {
  echo 'Loading Linux ...'
  linux /vmlinuz root=UUID=$UUID $CMDLINE
  echo 'Loading initial ramdisk ...'
  initrd /initrd.img
}
EOF

# 3. The disk: ext4 written straight into the partition (nothing mounted: this kernel scans no
# partitions on loop devices), an MBR partition table, GRUB's boot sector and core image in the
# gap before the partition, where grub-bios-setup would put them.
D=$W/disk.raw
truncate -s "${DISK_MIB}M" "$D"
FS_KIB=$(((DISK_MIB * 1024) - PART_START / 2))
MKE2FS_CONFIG=$R/etc/mke2fs.conf mke2fs -q -F -t ext4 -U "$UUID" \
  -E "offset=$((PART_START * 512)),root_owner=0:0,hash_seed=$UUID" -d "$R" "$D" "${FS_KIB}k" \
  >"$W/mkfs.log" 2>&1 || { cat "$W/mkfs.log" >&2; die "mke2fs failed"; }
printf 'label: dos\nlabel-id: %s\nstart=%s, type=83, bootable\n' "$DISKID" "$PART_START" |
  sfdisk -q --no-reread --no-tell-kernel --wipe never --wipe-partitions never "$D" >"$W/sfdisk.log" 2>&1 || { cat "$W/sfdisk.log" >&2; die "sfdisk failed"; }
cat >"$W/core.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $UUID
set prefix=(\$root)/boot/grub
EOF
grub-mkimage -O i386-pc -o "$W/core.img" -c "$W/core.cfg" -p /boot/grub biosdisk part_msdos ext2 search
CORE_SECTORS=$((($(stat -c %s "$W/core.img") + 511) / 512))
((CORE_SECTORS < PART_START - 1)) || die "GRUB's core image ($CORE_SECTORS sectors) does not fit before the partition"
dd if=/usr/lib/grub/i386-pc/boot.img of="$D" bs=440 count=1 conv=notrunc status=none
# As grub-bios-setup does for hard disks: replace the boot-drive check's jump with two NOPs (for
# BIOSes that pass a wrong drive number). boot.img's kernel sector already says 1.
printf '\x90\x90' | dd of="$D" bs=1 seek=$((0x66)) conv=notrunc status=none
dd if="$W/core.img" of="$D" bs=512 seek=1 conv=notrunc status=none
e2fsck -fn "$D?offset=$((PART_START * 512))" >"$W/fsck.log" 2>&1 || { cat "$W/fsck.log" >&2; die "the new filesystem is not clean"; }
qemu-img convert -c -f raw -O qcow2 "$D" "$W/out.qcow2"
rm -f "$D"

# 4. Manifest, then publish atomically.
mkdir -p "$W/out"
mv "$W/out.qcow2" "$W/out/base.qcow2"
{
  echo "# kiln cloud guest $HASH"
  echo "built $(date -u +%Y-%m-%dT%H:%M:%SZ) by scripts/cloud-guest.sh on $(uname -n)"
  echo "suite $SUITE"
  echo "kernel $(readlink "$R/vmlinuz" | sed 's|.*/vmlinuz-||')"
  grep -E '^(cloud-init|openssh-server|sudo|systemd|linux-image-[0-9].*)=' "$RDIR/packages.txt" | sed 's/^/package /'
  echo "disk ${DISK_MIB} MiB, msdos label-id $DISKID, partition 1 at sector $PART_START (bootable, type 83)"
  echo "rootfs ext4 uuid=$UUID, $(du -sh --apparent-size "$R" | cut -f1) of files"
  echo "boot GRUB $(grep '^grub-pc-bin ' <<<"$HOSTVERS" | cut -d' ' -f2) i386-pc, core image $CORE_SECTORS sectors; linux /vmlinuz root=UUID=$UUID $CMDLINE"
  echo "default-user debian (made by cloud-init at first boot; sudo without password)"
  echo "# all packages:"
  sed 's/^/  /' "$RDIR/packages.txt"
  echo "# inputs (hashed):"
  echo "$INPUTS"
  echo "# root filesystem inputs (hashed into rootfs $RKEY), less the build function:"
  echo "$ROOTFS_INPUTS" | sed '/^in_chroot ()/,$d'
} >"$W/out/manifest.txt"
chmod 444 "$W/out"/*
# An existing entry (--force, or a damaged one) is moved aside first: we hold the lock.
[[ -e $OUT ]] && { chmod -R u+w "$OUT"; mv -T "$OUT" "$W/old"; }
mv -T "$W/out" "$OUT"
set_current
((PRUNE)) && prune
ms=$((($(date +%s%N) - T0) / 1000000))
log "built $HASH in $((ms / 1000)).$((ms % 1000 / 100)) s ($(du -h "$OUT/base.qcow2" | cut -f1) qcow2)"
echo "$OUT"
