#!/usr/bin/env bash
# vdma's dma-engine behind QEMU's vfio-user client, driven through qtest.
#
# Not part of CI (needs a QEMU build with vfio-user-pci; see README.md here). For each memory
# mode it starts `vdma serve`, starts QEMU (q35, qtest accelerator, no guest code) with
# `-device vfio-user-pci` pointing at vdma's socket, runs qtest_dma_engine.py against QEMU's
# qtest socket, then stops both and checks their logs:
#   shared   guest RAM is a shared memfd: QEMU passes its fd in DMA_MAP, vdma maps it
#   private  guest RAM is anonymous (share=off): DMA_MAP has no fd, vdma reaches guest memory
#            through DMA_READ/DMA_WRITE messages in QEMU's layout
#
# Environment:
#   QEMU       qemu-system-x86_64 to use (default: the one on PATH)
#   QEMU_BIOS  directory holding bios-256k.bin (default /usr/share/seabios)
#   VDMA       the vdma binary (default: build it with cargo into $CARGO_TARGET_DIR or
#              <repo>/target, release profile)
#   RUST_LOG   vdma's log level (default debug)
#   MODES      which modes to run (default "shared private")
#   KEEP       1 to keep the work directory (logs) even when everything passed
#   WORKDIR    where logs and sockets go (default: a new temporary directory)
#   DRIVER_ARGS  extra arguments for qtest_dma_engine.py (e.g. "--big 65536 --no-irq")
# Exit status: 0 when every mode passed, 1 otherwise.
set -u -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
QEMU=${QEMU:-qemu-system-x86_64}
QEMU_BIOS=${QEMU_BIOS:-/usr/share/seabios}
MODES=${MODES:-shared private}
export RUST_LOG=${RUST_LOG:-debug}
work=${WORKDIR:-$(mktemp -d /tmp/vdma-qemu.XXXXXX)}
mkdir -p "$work"

die() { echo "run.sh: $*" >&2; exit 1; }

command -v "$QEMU" >/dev/null 2>&1 || die "QEMU not found: $QEMU (set QEMU=/path/to/qemu-system-x86_64)"
[ -e "$QEMU_BIOS/bios-256k.bin" ] || die "no bios-256k.bin in $QEMU_BIOS (apt-get install seabios, or set QEMU_BIOS)"
case "$("$QEMU" -device help 2>&1)" in
    *'"vfio-user-pci"'*) ;;
    *) die "$QEMU has no vfio-user-pci device" ;;
esac

if [ -z "${VDMA:-}" ]; then
    echo "building vdma (cargo build -p vdma-cli --release)"
    (cd "$repo" && nice cargo build -q -p vdma-cli --release) || die "cargo build failed"
    VDMA=${CARGO_TARGET_DIR:-$repo/target}/release/vdma
fi
[ -x "$VDMA" ] || die "vdma binary not found: $VDMA"

echo "QEMU: $("$QEMU" --version | head -1) ($QEMU)"
echo "vdma: $("$VDMA" --version 2>/dev/null) ($VDMA)"
echo "logs: $work"

vdma_pid=
qemu_pid=
cleanup() {
    # Only the two processes this script started, by pid.
    [ -n "$qemu_pid" ] && kill "$qemu_pid" 2>/dev/null
    [ -n "$vdma_pid" ] && kill "$vdma_pid" 2>/dev/null
    wait 2>/dev/null
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Waits up to $2 seconds for process $1 (a child of this shell) to exit, SIGKILL after that.
# Sets $exit_status to its exit status, or "killed".
exit_status=
wait_exit() {
    local pid=$1 limit=$2 i=0
    while kill -0 "$pid" 2>/dev/null && [ $i -lt $((limit * 10)) ]; do
        sleep 0.1
        i=$((i + 1))
    done
    if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null
        exit_status=killed
        return
    fi
    wait "$pid" 2>/dev/null
    exit_status=$?
}

run_mode() {
    local mode=$1 ok=1 memobj
    local vsock=$work/vdma-$mode.sock qsock=$work/qtest-$mode.sock
    local vlog=$work/vdma-$mode.log qlog=$work/qemu-$mode.log qtrace=$work/qemu-trace-$mode.log
    case $mode in
        shared) memobj="memory-backend-memfd,id=mem,size=256M,share=on" ;;
        private) memobj="memory-backend-ram,id=mem,size=256M,share=off" ;;
        *) die "unknown mode $mode" ;;
    esac
    echo
    echo "== $mode: $memobj"
    rm -f "$vsock" "$qsock"

    "$VDMA" serve --socket "$vsock" 2>"$vlog" &
    vdma_pid=$!
    for _ in $(seq 100); do
        [ -S "$vsock" ] && break
        kill -0 "$vdma_pid" 2>/dev/null || break
        sleep 0.1
    done
    if [ ! -S "$vsock" ]; then
        echo "[$mode] FAIL vdma serve did not create its socket"
        sed 's/^/  vdma: /' "$vlog" | tail -20
        return 1
    fi

    "$QEMU" -machine q35 -accel qtest -display none -nodefaults -L "$QEMU_BIOS" -global apic-common.vapic=off \
        -m 256M -object "$memobj" -machine memory-backend=mem \
        -qtest "unix:$qsock,server=on,wait=off" -qtest-log none \
        -trace 'vfio_user_*' -D "$qtrace" \
        -device "{\"driver\": \"vfio-user-pci\", \"id\": \"dma0\", \"socket\": {\"type\": \"unix\", \"path\": \"$vsock\"}}" \
        </dev/null >"$qlog" 2>&1 &
    qemu_pid=$!

    timeout 300 python3 "$here/qtest_dma_engine.py" --qtest "$qsock" --mode "$mode" \
        --log "$work/qtest-$mode.log" ${DRIVER_ARGS:-} || ok=0

    # QEMU quits on SIGTERM (it disconnects from vdma); vdma stops on SIGTERM.
    kill -TERM "$qemu_pid" 2>/dev/null
    local qrc vrc
    wait_exit "$qemu_pid" 10
    qrc=$exit_status
    qemu_pid=
    sleep 0.2
    kill -TERM "$vdma_pid" 2>/dev/null
    wait_exit "$vdma_pid" 10
    vrc=$exit_status
    vdma_pid=

    # QEMU must have realized the device without a word on stderr (vfio-user errors, warnings
    # such as "spurious capabilities").
    if [ -n "$(grep -v 'terminating on signal' "$qlog")" ]; then
        echo "[$mode] FAIL QEMU printed:"
        sed 's/^/  qemu: /' "$qlog" | head -20
        ok=0
    else
        echo "[$mode] PASS QEMU realized vfio-user-pci, nothing on stderr"
    fi
    case $qrc in
        0) echo "[$mode] PASS QEMU exited 0 on SIGTERM" ;;
        *) echo "[$mode] FAIL QEMU exit status $qrc"; ok=0 ;;
    esac
    if [ "$vrc" = 0 ] && [ ! -e "$vsock" ]; then
        echo "[$mode] PASS vdma serve exited 0 on SIGTERM and removed its socket"
    else
        echo "[$mode] FAIL vdma serve exit status $vrc, socket left: $([ -e "$vsock" ] && echo yes || echo no)"
        ok=0
    fi
    if [ -n "$(grep -E ' (ERROR|WARN) |panicked' "$vlog")" ]; then
        echo "[$mode] NOTE vdma logged warnings or errors:"
        grep -E ' (ERROR|WARN) |panicked' "$vlog" | head -10 | sed 's/^/  vdma: /'
        grep -q 'panicked' "$vlog" && ok=0
    fi
    [ $ok = 1 ]
}

summary=()
all=1
for mode in $MODES; do
    if run_mode "$mode"; then
        summary+=("PASS $mode")
    else
        summary+=("FAIL $mode")
        all=0
    fi
done

echo
echo "== summary (logs in $work)"
printf '%s\n' "${summary[@]}"
if [ $all = 1 ]; then
    [ "${KEEP:-0}" = 1 ] || [ -n "${WORKDIR:-}" ] || rm -rf "$work"
    echo "PASS"
    exit 0
fi
echo "FAIL"
exit 1
