#!/usr/bin/env bash
# Benchmark (not a test): bake the same tiny guest with the same shell step with kiln and with
# HashiCorp Packer 1.6.6 (Debian's `packer`, qemu builder), alternately, N runs each, and print
# the medians: wall time of each tool, the ratio kiln/packer (target <= 0.8) and kiln's own
# overhead = wall - (boot-to-SSH + provisioning + shutdown) (target < 0.5 s). Then write the
# figures into docs/PERFORMANCE.md (between its bake-vs-packer markers).
#
# usage: benches/bake-vs-packer.sh [--runs N] [--no-docs] [--only kiln|packer] [--accel tcg|kvm]
#                                  [--kiln PATH] [--guest DIR] [--wait-quiet S] [--keep]
#   --runs N       runs per tool (default 5); rounds alternate which tool goes first
#   --no-docs      print the table only; leave docs/PERFORMANCE.md alone
#   --only TOOL    run one tool only (to check one half); the docs then show the other as missing
#   --accel A      accelerator for BOTH tools (default tcg: on the project's machines /dev/kvm is a
#                  nested kvm_pvm that stock kernels die under; see ../shared/ENV-NOTES.md)
#   --kiln PATH    kiln binary (default target/release/kiln; build it with
#                  `cargo build --release --bin kiln`)
#   --guest DIR    a tiny-guest directory (default: the last line of scripts/tiny-guest.sh)
#   --wait-quiet S before each run, wait up to S seconds for the machine to go quiet (CPU < 20 %
#                  busy over 1 s): TCG guests slow down badly when other work shares the cores
#   --keep         keep the scratch directory (runs, logs) for a look afterwards; says where
#
# Needs: qemu-system-x86_64, qemu-img, packer (1.6.6), ssh-keygen, python3, debugfs
# (`scripts/setup.sh --bench` installs them). Everything lives in one temporary directory that is
# removed at exit, with the NoCloud HTTP server for Packer (python3 -m http.server on 127.0.0.1)
# and any QEMU the bench started. Every port any of this opens is bound to 127.0.0.1; the first
# round checks that with ss.
#
# Timing: each build runs under a small Python wrapper that measures wall time with
# time.monotonic() from just before fork to just after the tool exits, and timestamps every
# stdout line (kiln --json events / packer -machine-readable lines) for the phase breakdown.
# After every run (untimed) the image is checked: it must contain /etc/bench-marker.
set -euo pipefail
export LC_ALL=C

SELF=$(readlink -f "${BASH_SOURCE[0]}")
ROOT=$(dirname "$(dirname "$SELF")")
CMDLINE="benches/bake-vs-packer.sh${*:+ $*}"

RUNS=5 DOCS=1 KEEP=0 WAIT_QUIET=0 ONLY= ACCEL=tcg KILN=$ROOT/target/release/kiln GUEST=
usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$SELF"; }
die() { echo "bake-vs-packer: error: $*" >&2; exit 1; }
log() { echo "bake-vs-packer: $*" >&2; }
while (($#)); do
  case "$1" in
    --runs) [[ ${2:-} =~ ^[1-9][0-9]*$ ]] || die "--runs needs a positive integer"; RUNS=$2; shift ;;
    --runs=*) RUNS=${1#*=}; [[ $RUNS =~ ^[1-9][0-9]*$ ]] || die "--runs needs a positive integer" ;;
    --no-docs) DOCS=0 ;;
    --keep) KEEP=1 ;;
    --wait-quiet) [[ ${2:-} =~ ^[0-9]+$ ]] || die "--wait-quiet needs seconds"; WAIT_QUIET=$2; shift ;;
    --only) [[ ${2:-} == kiln || ${2:-} == packer ]] || die "--only takes kiln or packer"; ONLY=$2; shift ;;
    --accel) [[ ${2:-} == tcg || ${2:-} == kvm ]] || die "--accel takes tcg or kvm"; ACCEL=$2; shift ;;
    --kiln) [[ -n ${2:-} ]] || die "--kiln needs a path"; KILN=$2; shift ;;
    --guest) [[ -n ${2:-} ]] || die "--guest needs a directory"; GUEST=$2; shift ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument: $1 (try --help)" ;;
  esac
  shift
done
want() { [[ -z $ONLY || $ONLY == "$1" ]]; }

# --- tools -------------------------------------------------------------------------------------
missing=()
for t in qemu-system-x86_64 qemu-img python3 debugfs; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
if want packer; then
  for t in packer ssh-keygen; do command -v "$t" >/dev/null 2>&1 || missing+=("$t"); done
fi
((${#missing[@]} == 0)) || die "missing tools: ${missing[*]} - install them with: sudo scripts/setup.sh --bench"
if want packer; then
  PACKER_VERSION=$(packer version 2>/dev/null | head -n 1)
  [[ $PACKER_VERSION == "Packer v1.6.6"* ]] || log "warning: the baseline is Packer 1.6.6; found '${PACKER_VERSION:-?}'"
fi
if want kiln; then
  [[ -x $KILN ]] || die "no kiln binary at $KILN - build it with: cargo build --release --bin kiln (or pass --kiln PATH)"
  KILN=$(readlink -f "$KILN")
  KILN_VERSION=$("$KILN" --version 2>/dev/null | head -n 1 || true)
fi
QEMU_VERSION=$(qemu-system-x86_64 --version | head -n 1)
if [[ $ACCEL == kvm ]] && [[ ! -w /dev/kvm ]]; then die "--accel kvm, but /dev/kvm is missing or not writable"; fi

# --- the tiny guest ----------------------------------------------------------------------------
if [[ -z $GUEST ]]; then
  [[ -x $ROOT/scripts/tiny-guest.sh ]] || die "scripts/tiny-guest.sh not found (or pass --guest DIR)"
  log "building/finding the tiny guest (scripts/tiny-guest.sh)"
  GUEST=$("$ROOT/scripts/tiny-guest.sh" | tail -n 1) || die "scripts/tiny-guest.sh failed"
fi
GUEST=$(readlink -f "$GUEST")
for f in vmlinuz initrd.gz base.qcow2 append.txt; do
  [[ -r $GUEST/$f ]] || die "the guest directory $GUEST has no $f"
done
APPEND=$(head -n 1 "$GUEST/append.txt")

# --- scratch space and cleanup -----------------------------------------------------------------
TMP=$(mktemp -d "${TMPDIR:-/tmp}/kiln-bench.XXXXXX")
HTTP_PID= SS_PID=
bench_qemu_pids() { # QEMU processes whose command line mentions our scratch dir (kiln's overlay
  # and Packer's output disk both live there); nothing else on the machine matches.
  local pid
  for pid in $(pgrep -f 'qemu-system' 2>/dev/null || true); do
    { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "$TMP/" && echo "$pid"
  done
  return 0
}
cleanup() {
  local rc=$? pids i
  trap - EXIT INT TERM
  [[ -n $SS_PID ]] && kill "$SS_PID" 2>/dev/null || true
  [[ -n $HTTP_PID ]] && { kill "$HTTP_PID" 2>/dev/null; wait "$HTTP_PID" 2>/dev/null; } || true
  pids=$(bench_qemu_pids)
  if [[ -n $pids ]]; then
    log "stopping leftover QEMU: $(echo $pids)"
    kill $pids 2>/dev/null || true
    for i in 1 2 3 4 5 6 7 8 9 10; do pids=$(bench_qemu_pids); [[ -z $pids ]] && break; sleep 0.3; done
    [[ -n $pids ]] && kill -9 $pids 2>/dev/null || true
  fi
  if ((KEEP)); then log "kept $TMP"; else rm -rf "$TMP"; fi
  exit "$rc"
}
# On SIGINT/SIGTERM: ask the running tool to stop (the wrapper passes SIGINT to it and waits up
# to 30 s), then clean up. The wrapper runs in the background so that bash acts at once.
TIMED_PID=
on_signal() {
  if [[ -n $TIMED_PID ]]; then
    log "interrupted; stopping the running build"
    kill -TERM "$TIMED_PID" 2>/dev/null || true
    wait "$TIMED_PID" 2>/dev/null || true
  fi
  exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM

# The timing wrapper: runs a command in its own session, stamps each stdout line with the
# monotonic seconds since the start, writes {"wall": s, "rc": n}. On SIGINT/SIGTERM it passes
# SIGINT to the tool's process group (both tools clean up on it), then SIGKILL after 30 s.
cat >"$TMP/timed.py" <<'PY'
import json, os, signal, subprocess, sys, threading, time
out, err, res = sys.argv[1:4]
cmd = sys.argv[5:]
stop = []
def kill_group(sig):
    try: os.killpg(proc.pid, sig)
    except (ProcessLookupError, NameError): pass
def on_signal(signum, frame):
    if not stop:
        t = threading.Timer(30, kill_group, (signal.SIGKILL,)); t.daemon = True; t.start()
    stop.append(signum)
    kill_group(signal.SIGINT)
signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGTERM, on_signal)
def cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]  # total, idle + iowait
c0 = cpu()
t0 = time.monotonic()
proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(err, "wb"),
                        stdin=subprocess.DEVNULL, start_new_session=True)
with open(out, "w") as f:
    for line in iter(proc.stdout.readline, b""):
        f.write("%.3f\t%s" % (time.monotonic() - t0, line.decode("utf-8", "replace")))
        if not line.endswith(b"\n"): f.write("\n")
rc = proc.wait()
wall = time.monotonic() - t0
c1 = cpu()
busy = 1 - (c1[1] - c0[1]) / max(1, c1[0] - c0[0])
json.dump({"wall": wall, "rc": rc, "machine_busy": busy}, open(res, "w"))
sys.exit(130 if stop else 0)
PY

# Everything the run produces is summarised by this script: phases from the stamped stdout.
cat >"$TMP/phases.py" <<'PY'
import json, sys
tool, out, res = sys.argv[1:4]
r = json.load(open(res))
wall = r["wall"]
ph = {"wall": wall, "machine_busy": r.get("machine_busy", 0.0)}
lines = []
for raw in open(out, encoding="utf-8", errors="replace"):
    t, _, line = raw.rstrip("\n").partition("\t")
    lines.append((float(t), line))
if tool == "kiln":
    prov = 0.0
    for t, line in lines:
        try: ev = json.loads(line)
        except ValueError: continue
        e = ev.get("event")
        if e == "step_finished":
            step, d = ev.get("step", ""), float(ev.get("duration_s") or 0)
            if step.startswith("provision/"): prov += d
            else: ph[step] = ph.get(step, 0.0) + d
        elif e == "run_finished":
            ph["in_process"] = float(ev.get("duration_s") or 0)
            ph["status"] = ev.get("status")
        elif e == "artifact_written":
            ph["artifact"] = ev.get("path")
        elif e == "note":
            ph.setdefault("notes", []).append(ev.get("message", ""))
    ph["provision"] = prov
    missing = [s for s in ("connect", "shutdown") if s not in ph]
    if missing:
        sys.exit("kiln: no step_finished for %s in the --json events" % ", ".join(missing))
    ph["boot_to_ssh"] = ph["connect"]
else:
    # packer -machine-readable: "unix-ts,target,type,data..."; the stamps are ours (ms).
    marks = {"vm_start": "Starting VM", "wait_ssh": "Waiting for SSH to become available",
             "connected": "Connected to SSH!", "provision": "Provisioning with shell script",
             "halt": "Gracefully halting virtual machine", "convert": "Converting hard drive"}
    at = {}
    for t, line in lines:
        parts = line.split(",", 3)
        if len(parts) < 4 or parts[2] != "ui": continue
        for k, needle in marks.items():
            if k not in at and needle in parts[3]: at[k] = t
    missing = [marks[k] for k in marks if k not in at]
    if missing:
        sys.exit("packer: output lacks %s" % "; ".join(missing))
    ph["before_vm"] = at["vm_start"]
    ph["vm_start_to_ssh_wait"] = at["wait_ssh"] - at["vm_start"]
    ph["boot_to_ssh"] = at["connected"] - at["vm_start"]
    ph["provision"] = at["halt"] - at["provision"]
    ph["connected_to_provision"] = at["provision"] - at["connected"]
    ph["shutdown"] = at["convert"] - at["halt"]
    ph["convert_and_exit"] = wall - at["convert"]
ph["guest_work"] = ph["boot_to_ssh"] + ph["provision"] + ph["shutdown"]
ph["overhead"] = wall - ph["guest_work"]
print(json.dumps(ph))
PY

# --- inputs for the two tools ------------------------------------------------------------------
if want packer; then
  ssh-keygen -q -t ed25519 -N '' -C kiln-bench -f "$TMP/packer_key"
  mkdir "$TMP/seed"
  printf '#cloud-config\nssh_authorized_keys:\n  - %s\n' "$(cat "$TMP/packer_key.pub")" >"$TMP/seed/user-data"
  printf 'instance-id: kiln-bench\nlocal-hostname: tiny\n' >"$TMP/seed/meta-data"
  # Port 0: the kernel picks a free port and http.server prints it (no race with others).
  (cd "$TMP/seed" && exec python3 -u -m http.server --bind 127.0.0.1 0) >"$TMP/http.log" 2>&1 &
  HTTP_PID=$!
  HTTP_PORT=
  for _ in $(seq 50); do
    HTTP_PORT=$(sed -n 's/^Serving HTTP on 127\.0\.0\.1 port \([0-9][0-9]*\).*/\1/p' "$TMP/http.log")
    [[ -n $HTTP_PORT ]] && break
    kill -0 "$HTTP_PID" 2>/dev/null || die "the NoCloud HTTP server did not start: $(cat "$TMP/http.log")"
    sleep 0.1
  done
  [[ -n $HTTP_PORT ]] || die "the NoCloud HTTP server did not report its port"
fi

write_kiln_project() { # DIR
  mkdir -p "$1"
  cat >"$1/kiln.toml" <<EOF
[project]
name = "bench"
[vars]
guest = "$GUEST"
[[image]]
name = "tiny"
source = { qemu = { disk = "{{ guest }}/base.qcow2", kernel = "{{ guest }}/vmlinuz", initrd = "{{ guest }}/initrd.gz", append = "$APPEND", memory = 256, accelerator = "$ACCEL" } }
shutdown = { command = "sync; mount -o remount,ro /; poweroff -f", timeout = "1m" }
provision = [ { shell = { inline = ["echo bench > /etc/bench-marker", "sync"] } } ]
output = { format = "qcow2" }
EOF
}

write_packer_template() { # DIR
  mkdir -p "$1"
  python3 - "$1" "$GUEST" "$APPEND" "$HTTP_PORT" "$ACCEL" "$TMP/packer_key" <<'PY'
import json, sys
d, guest, append, port, accel, key = sys.argv[1:7]
t = {"builders": [{
    "type": "qemu",
    "disk_image": True,
    "iso_url": guest + "/base.qcow2",
    "iso_checksum": "none",
    "skip_resize_disk": True,
    "boot_wait": "1ms",
    "format": "qcow2",
    "headless": True,
    "accelerator": accel,
    "memory": 256,
    "vnc_bind_address": "127.0.0.1",
    "output_directory": d + "/out",
    "vm_name": "tiny.qcow2",
    "communicator": "ssh",
    "ssh_host": "127.0.0.1",
    "ssh_username": "root",
    "ssh_private_key_file": key,
    "ssh_timeout": "2m",
    "shutdown_command": "sync; mount -o remount,ro /; poweroff -f",
    "shutdown_timeout": "1m",
    # Packer uses these instead of its defaults; the netdev is ours so that the SSH forward
    # binds 127.0.0.1 only (Packer 1.6.6's default is hostfwd=tcp::PORT-:22, all addresses).
    "qemuargs": [
        ["-kernel", guest + "/vmlinuz"],
        ["-initrd", guest + "/initrd.gz"],
        ["-append", "%s ds=nocloud;s=http://10.0.2.2:%s/" % (append, port)],
        ["-netdev", "user,id=user.0,hostfwd=tcp:127.0.0.1:{{ .SSHHostPort }}-:22"],
        ["-device", "virtio-net-pci,netdev=user.0"],
    ],
}],
"provisioners": [{"type": "shell", "inline": ["echo bench > /etc/bench-marker", "sync"]}]}
json.dump(t, open(d + "/template.json", "w"), indent=2)
PY
}

# The baked image must contain the marker the shell step wrote (checked untimed).
check_image() { # TOOL RUN QCOW2
  [[ -f $3 ]] || die "$1 run $2: no image at $3"
  qemu-img convert -O raw "$3" "$TMP/check.raw" || die "$1 run $2: qemu-img cannot read $3"
  local got
  got=$(debugfs -R 'cat /etc/bench-marker' "$TMP/check.raw" 2>/dev/null || true)
  rm -f "$TMP/check.raw"
  [[ $got == bench ]] || die "$1 run $2: the image lacks /etc/bench-marker (got '${got}')"
}

# Round 1 only: while the VM runs, list the TCP listeners of kiln (its NoCloud seed server), Packer,
# their QEMU and our HTTP server.
watch_listeners() { # OUTFILE (one ss call a second, in one small Python process)
  command -v ss >/dev/null 2>&1 || return 0
  python3 - "$1" "$TMP/" "${HTTP_PID:-0}" <<'PY' &
import re, subprocess, sys, time
out, tmp, http_pid = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
def ours(pid):
    if pid == http_pid: return True
    try: return tmp in open("/proc/%s/cmdline" % pid, "rb").read()
    except OSError: return False
with open(out, "a") as f:
    for _ in range(40):
        time.sleep(1)
        ss = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
        for line in ss.splitlines():
            if any(ours(p) for p in re.findall(r"pid=(\d+)", line)):
                f.write(line + "\n")
        f.flush()
PY
  SS_PID=$!
}
stop_watch() { [[ -n $SS_PID ]] && { kill "$SS_PID" 2>/dev/null; wait "$SS_PID" 2>/dev/null; SS_PID=; } || true; }

# --wait-quiet: wait until the whole machine is < 20 % busy over one second (or give up).
wait_quiet() {
  ((WAIT_QUIET > 0)) || return 0
  python3 - "$WAIT_QUIET" <<'PY'
import sys, time
def cpu():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return sum(v), v[3] + v[4]
limit = time.monotonic() + float(sys.argv[1]); said = False
while True:
    a = cpu(); time.sleep(1); b = cpu()
    busy = 1 - (b[1] - a[1]) / max(1, b[0] - a[0])
    if busy < 0.2: break
    if time.monotonic() > limit:
        print("bake-vs-packer: machine still %.0f %% busy; running anyway" % (busy * 100), file=sys.stderr); break
    if not said:
        print("bake-vs-packer: machine %.0f %% busy; waiting for it to go quiet" % (busy * 100), file=sys.stderr); said = True
PY
}

RESULTS=$TMP/results.jsonl
: >"$RESULTS"
run_one() { # TOOL ROUND
  local tool=$1 i=$2 dir=$TMP/$1-$2 rc phases artifact
  if [[ $tool == kiln ]]; then
    write_kiln_project "$dir"
    set -- "$KILN" -C "$dir" --json build --force
  else
    write_packer_template "$dir"
    set -- env CHECKPOINT_DISABLE=1 PACKER_LOG=0 PACKER_CACHE_DIR="$dir/packer_cache" \
      PACKER_CONFIG_DIR="$TMP/packer.d" TMPDIR="$dir" \
      packer build -machine-readable -color=false "$dir/template.json"
  fi
  wait_quiet
  ((i == 1)) && watch_listeners "$TMP/listeners.txt"
  rc=0
  (cd "$dir" && exec python3 "$TMP/timed.py" "$dir/stdout" "$dir/stderr" "$dir/result.json" -- "$@") &
  TIMED_PID=$!
  wait "$TIMED_PID" || rc=$?
  TIMED_PID=
  stop_watch
  ((rc == 130)) && exit 130
  ((rc == 0)) || die "$tool run $i: the timing wrapper failed (rc $rc)"
  rc=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["rc"])' "$dir/result.json")
  if [[ $rc != 0 ]]; then
    log "$tool run $i failed (exit $rc); last lines of its output:"
    tail -n 15 "$dir/stderr" >&2 || true
    cut -f2- "$dir/stdout" | tail -n 15 >&2 || true
    die "$tool run $i failed"
  fi
  phases=$(python3 "$TMP/phases.py" "$tool" "$dir/stdout" "$dir/result.json") || die "$tool run $i: cannot read its output"
  if [[ $tool == kiln ]]; then
    artifact=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1]).get("artifact") or "")' "$phases")
    [[ -n $artifact ]] || die "kiln run $i: no artifact_written event"
    [[ $artifact == /* ]] || artifact=$dir/$artifact
  else
    artifact=$dir/out/tiny.qcow2
  fi
  check_image "$tool" "$i" "$artifact"
  [[ -z $(bench_qemu_pids) ]] || die "$tool run $i: QEMU still runs after the tool exited"
  python3 -c 'import json,sys; p=json.loads(sys.argv[3]); p["tool"]=sys.argv[1]; p["run"]=int(sys.argv[2]); print(json.dumps(p))' \
    "$tool" "$i" "$phases" >>"$RESULTS"
  python3 -c 'import json,sys; p=json.loads(sys.argv[4]); print("bake-vs-packer: round %s/%s  %-6s %6.2f s  (machine %2.0f %% busy)" % (sys.argv[1], sys.argv[2], sys.argv[3], p["wall"], 100 * p["machine_busy"]))' \
    "$i" "$RUNS" "$tool" "$phases" >&2
  ((KEEP)) || rm -rf "$dir"
}

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
log "$RUNS run(s) per tool, accelerator $ACCEL, guest $GUEST"
for ((i = 1; i <= RUNS; i++)); do
  if ((i % 2)); then order=(kiln packer); else order=(packer kiln); fi
  for tool in "${order[@]}"; do want "$tool" && run_one "$tool" "$i"; done
done
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)

if [[ -s $TMP/listeners.txt ]]; then
  if awk '{print $4}' "$TMP/listeners.txt" | grep -qvE '^127\.0\.0\.1:[0-9]+$'; then
    log "WARNING: something the bench started listened beyond 127.0.0.1:"; sort -u "$TMP/listeners.txt" >&2
    LISTEN_NOTE="WARNING: not loopback-only: $(awk '{print $4}' "$TMP/listeners.txt" | sort -u | tr '\n' ' ')"
  else
    LISTEN_NOTE="checked with ss during round 1: every listener was on 127.0.0.1 ($(awk '{print $4}' "$TMP/listeners.txt" | sort -u | wc -l) seen)"
  fi
else
  LISTEN_NOTE="not checked (ss missing or nothing seen)"
fi

# --- machine facts -----------------------------------------------------------------------------
CPU_MODEL=$(awk -F': *' '/^model name/ {print $2; exit}' /proc/cpuinfo)
NPROC=$(nproc)
MEM_GIB=$(awk '/^MemTotal/ {printf "%.1f", $2/1048576}' /proc/meminfo)
if [[ -e /dev/kvm ]]; then
  if [[ -d /sys/module/kvm_pvm ]]; then
    KVM_NOTE="/dev/kvm is a nested paravirtual KVM (kvm_pvm) that stock Debian kernels crash under, so KVM is unusable here"
  else
    KVM_NOTE="/dev/kvm is present"
  fi
else
  KVM_NOTE="no /dev/kvm"
fi
ACCEL_NOTE="$ACCEL for both tools ($KVM_NOTE)"
[[ $ACCEL == tcg ]] && ACCEL_NOTE="TCG (software emulation) for both tools; $KVM_NOTE"

# --- summary -----------------------------------------------------------------------------------
export RESULTS RUNS ONLY DOCS CMDLINE ACCEL ACCEL_NOTE CPU_MODEL NPROC MEM_GIB QEMU_VERSION \
  LOAD_BEFORE LOAD_AFTER LISTEN_NOTE GUEST
export PACKER_VERSION=${PACKER_VERSION:-} KILN_VERSION=${KILN_VERSION:-}
export DOC=$ROOT/docs/PERFORMANCE.md GUEST_ID=$(basename "$GUEST")
python3 - <<'PY'
import datetime, json, os, statistics

E = os.environ
rows = [json.loads(l) for l in open(E["RESULTS"])]
by = {t: [r for r in rows if r["tool"] == t] for t in ("kiln", "packer")}
def med(tool, key):
    v = [r[key] for r in by[tool] if key in r]
    return statistics.median(v) if v else None
def f(x, unit=" s"):
    return "—" if x is None else "%.2f%s" % (x, unit)

k_wall, p_wall = med("kiln", "wall"), med("packer", "wall")
k_over = med("kiln", "overhead")
ratio = k_wall / p_wall if (k_wall and p_wall) else None
def verdict(ok):
    return "" if ok is None else ("  ✔ met" if ok else "  ✘ NOT met")
ratio_ok = None if ratio is None else ratio <= 0.8
over_ok = None if k_over is None else k_over < 0.5

table = [
    ("wall time", "wall"),
    ("boot-to-SSH", "boot_to_ssh"),
    ("provisioning", "provision"),
    ("shutdown (to QEMU exit)", "shutdown"),
    ("guest work (sum of the 3)", "guest_work"),
    ("overhead = wall − guest work", "overhead"),
]
n = E["RUNS"]
title = "kiln vs Packer 1.6.6: tiny guest, one shell step, %s, medians of %s run(s) each" % (E["ACCEL"].upper(), n)
w = max(len(a) for a, _ in table) + 2
out = [title, "", "%-*s %10s %10s" % (w, "", "kiln", "packer")]
for label, key in table:
    out.append("%-*s %10s %10s" % (w, label, f(med("kiln", key)), f(med("packer", key))))
out.append("")
out.append("ratio kiln/packer (wall): %s   target ≤ 0.80%s" % (f(ratio, ""), verdict(ratio_ok)))
out.append("kiln overhead:            %s   target < 0.50 s%s" % (f(k_over), verdict(over_ok)))
for t in ("kiln", "packer"):
    if by[t]:
        out.append("%s runs (wall, s): %s" % (t, ", ".join("%.2f" % r["wall"] for r in by[t])))
busy = {t: med(t, "machine_busy") for t in ("kiln", "packer")}
out.append("machine CPU busy during the runs (all %s cores, median): %s" % (E["NPROC"], ", ".join(
    "%s %.0f %%" % (t, 100 * b) for t, b in busy.items() if b is not None)))
if any(b is not None and b > 0.75 for b in busy.values()):
    out.append("WARNING: other work shared the machine; TCG guest times are inflated (try --wait-quiet 600)")
print("\n".join(out))

if E["DOCS"] != "1":
    raise SystemExit(0)

# ---- docs/PERFORMANCE.md -------------------------------------------------------------------
now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
def cell(t, key):
    return f(med(t, key)) if by[t] else "not run"
md = []
md.append("## Bake: kiln vs HashiCorp Packer 1.6.6 (`benches/bake-vs-packer.sh`)")
md.append("")
md.append("Produced by `%s` on %s. Regenerate with the same command; it rewrites this section." % (E["CMDLINE"], now))
md.append("")
md.append("Workload: the project's tiny guest (`scripts/tiny-guest.sh`, build `%s`: Debian cloud kernel, "
          "busybox + dropbear, NoCloud seed over HTTP), 256 MiB, 1 vCPU, booted directly "
          "(`-kernel/-initrd/-append`); one shell step (`echo bench > /etc/bench-marker; sync`); "
          "shutdown with `sync; mount -o remount,ro /; poweroff -f`; output a standalone qcow2. "
          "Tools alternate (odd rounds kiln first, even rounds Packer first); every image is checked "
          "for the marker afterwards, outside the timing." % E["GUEST_ID"])
md.append("")
md.append("| median of %s run(s) | kiln | Packer 1.6.6 |" % n)
md.append("|---|---:|---:|")
for label, key in table:
    md.append("| %s | %s | %s |" % (label, cell("kiln", key), cell("packer", key)))
md.append("")
md.append("| target | result |")
md.append("|---|---|")
md.append("| wall time ratio kiln/Packer ≤ 0.80 | %s%s |" % (f(ratio, ""), verdict(ratio_ok) or " (not measured)"))
md.append("| kiln overhead < 0.50 s | %s%s |" % (f(k_over), verdict(over_ok) or " (not measured)"))
md.append("")
for t in ("kiln", "packer"):
    if by[t]:
        md.append("- %s, every run in order: wall %s s; boot-to-SSH %s s" % (t,
            ", ".join("%.2f" % r["wall"] for r in by[t]), ", ".join("%.2f" % r["boot_to_ssh"] for r in by[t])))
if by["kiln"]:
    ks = ["prepare", "launch", "connect", "provision", "generalize", "shutdown", "capture", "manifest", "in_process"]
    md.append("- kiln steps (medians from `--json` `step_finished`): " + ", ".join(
        "%s %s" % (s, f(med("kiln", s))) for s in ks if med("kiln", s) is not None))
if by["packer"]:
    md.append("- Packer phases (medians, from our timestamps on its `-machine-readable` lines): "
              "start to \"Starting VM\" %s; VM start to \"Waiting for SSH\" %s; "
              "to \"Connected to SSH\" %s in all; provisioning %s; halt to \"Converting hard drive\" %s; "
              "convert + exit %s." % tuple(f(med("packer", k)) for k in (
                  "before_vm", "vm_start_to_ssh_wait", "boot_to_ssh", "provision", "shutdown", "convert_and_exit")))
    md.append("  The ~2 s from \"Starting VM\" to \"Waiting for SSH\" is a fixed wait in Packer 1.6.6's QEMU "
              "driver (it waits 2 s for QEMU to fail early before going on); the guest boots meanwhile, so it "
              "only costs time when the guest would be up sooner. Packer's shell provisioner uploads the "
              "script with scp, runs it and removes it (several SSH sessions), hence its longer provisioning.")
md.append("- Machine CPU busy during the runs (all cores, median; one TCG guest alone keeps about one "
          "core busy): " + ", ".join("%s %.0f %%" % (t, 100 * b) for t, b in busy.items() if b is not None) + ".")
md.append("")
md.append("Definitions: wall = from just before the tool is started to its exit (monotonic clock). "
          "kiln's guest work = the durations of its `connect` (boot-to-SSH), `provision/*` and `shutdown` "
          "steps; Packer's = \"Starting VM\" → \"Connected to SSH!\" + provisioning + halt → \"Converting "
          "hard drive\". Overhead = wall − guest work: everything the tool does besides waiting for the "
          "guest (start-up, disk preparation, QEMU launch, capture/convert, bookkeeping; for kiln also its "
          "`generalize` step, on by default, which Packer has no counterpart of). Packer's "
          "boot-to-SSH includes its fixed 2 s wait after starting QEMU (the guest boots meanwhile).")
md.append("")
md.append("Machine: %s CPU(s), %s, %s GiB RAM; %s; accelerator: %s. Load average before/after: %s / %s "
          "(other work may share the machine). Listening ports: %s." % (
              E["NPROC"], E["CPU_MODEL"], E["MEM_GIB"], E["QEMU_VERSION"], E["ACCEL_NOTE"],
              E["LOAD_BEFORE"], E["LOAD_AFTER"], E["LISTEN_NOTE"]))
md.append("")
md.append("Versions: %s; %s." % (E.get("KILN_VERSION") or ("kiln not run" if not by["kiln"] else "kiln (version unknown)"),
                                   E.get("PACKER_VERSION") or "Packer not run"))
section = "\n".join(md) + "\n"

BEGIN, END = "<!-- bake-vs-packer:begin -->", "<!-- bake-vs-packer:end -->"
block = BEGIN + "\n" + section + END + "\n"
path = E["DOC"]
try:
    text = open(path, encoding="utf-8").read()
except FileNotFoundError:
    text = ("# Performance\n\nMeasured figures, each section written by the benchmark named in it "
            "(`benches/`). Numbers from a shared 2-core machine are indicative, not a contract.\n\n")
if BEGIN in text and END in text:
    a = text.index(BEGIN); b = text.index(END) + len(END)
    rest = text[b:]
    if rest.startswith("\n"): rest = rest[1:]
    text = text[:a] + block + rest
else:
    text = text.rstrip("\n") + "\n\n" + block
tmp = path + ".tmp"
open(tmp, "w", encoding="utf-8").write(text)
os.replace(tmp, path)
print("\nwrote %s" % os.path.relpath(path))
PY
