#!/usr/bin/env python3
"""Drive vdma's dma-engine behind QEMU's vfio-user-pci through the qtest protocol.

QEMU runs with `-accel qtest -qtest unix:SOCK,server=on,wait=off`; this script connects to
SOCK and acts as the guest: it finds the device on PCI bus 0 through the 0xcf8/0xcfc ports,
sizes and places its BARs, turns on memory decoding and bus mastering, then programs the
dma-engine's registers (shared/spec/dma-engine.md) to COPY, FILL and CRC32 guest RAM, and
checks every byte and the CRC against Python's own (zlib.crc32). It also checks the error
paths (unmapped source, read-only destination) and the three interrupt kinds: MSI-X and MSI
are pointed at a guest RAM address, so a delivered interrupt is a 32-bit write there that
the script reads back; INTx is seen as "IRQ raise" from the I/O APIC's intercepted inputs.

Standard library only. Exit status 0 when every check passed, 1 when one failed, 2 when the
device could not be driven at all. Prints one line per check and a summary.
"""

import argparse
import base64
import os
import random
import socket
import sys
import time
import zlib

VENDOR = 0x1234
DEVICE = 0xD3A0

# dma-engine registers (BAR0)
ID, VERSION, SRC_LO, SRC_HI, DST_LO, DST_HI, LEN, CMD = 0x00, 0x04, 0x08, 0x0C, 0x10, 0x14, 0x18, 0x1C
STATUS, ERRNO, RESULT, PATTERN, IRQ_ENABLE, IRQ_STATUS, COUNT = 0x20, 0x24, 0x28, 0x2C, 0x30, 0x34, 0x38
CMD_COPY, CMD_FILL, CMD_CRC32 = 1, 2, 3
ST_IDLE, ST_BUSY, ST_DONE, ST_ERROR = 0, 1, 2, 3
ID_VALUE = 0x56444D41

EPERM, EINVAL = 1, 22

# Guest physical layout used by the test (guest RAM is 256 MiB from 0).
BAR0_ADDR = 0xFE000000
BAR1_ADDR = 0xFE001000
RAM_SRC = 0x01000000  # 16 MiB
RAM_DST = 0x02000000  # 32 MiB
RAM_BIG_SRC = 0x03000000
RAM_BIG_DST = 0x04000000
RAM_MSG = 0x00F00000  # where MSI/MSI-X messages land
UNMAPPED = 0x40000000  # 1 GiB: beyond guest RAM, below the PCI hole
ROM_ADDR = 0xFFFF0000  # the BIOS ROM at the top of 4 GiB: mapped read-only

CAP_MSI, CAP_MSIX, CAP_EXP = 0x05, 0x11, 0x10


class QTestError(Exception):
    pass


class QTest:
    """A qtest connection: one command at a time, async IRQ lines collected."""

    def __init__(self, path, timeout):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(path)
                break
            except OSError as e:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise QTestError(f"cannot connect to qtest socket {path}: {e}")
                time.sleep(0.05)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.irqs = []  # ("raise"|"lower", num)
        self.log = None

    def _line(self):
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise QTestError("qtest socket closed by QEMU")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line.decode("ascii", "replace")

    def cmd(self, text):
        if self.log:
            self.log.write("> " + (text if len(text) < 200 else text[:200] + "...") + "\n")
        self.sock.sendall(text.encode("ascii") + b"\n")
        while True:
            line = self._line()
            if line.startswith("IRQ "):
                _, kind, num = line.split()
                self.irqs.append((kind, int(num)))
                if self.log:
                    self.log.write("< " + line + "\n")
                continue
            if self.log:
                self.log.write("< " + (line if len(line) < 200 else line[:200] + "...") + "\n")
            if not line.startswith("OK"):
                raise QTestError(f"qtest command {text[:80]!r} failed: {line}")
            return line[2:].strip()

    # port I/O
    def outl(self, port, v):
        self.cmd(f"outl {port:#x} {v:#x}")

    def outw(self, port, v):
        self.cmd(f"outw {port:#x} {v:#x}")

    def outb(self, port, v):
        self.cmd(f"outb {port:#x} {v:#x}")

    def inl(self, port):
        return int(self.cmd(f"inl {port:#x}"), 16)

    def inw(self, port):
        return int(self.cmd(f"inw {port:#x}"), 16)

    def inb(self, port):
        return int(self.cmd(f"inb {port:#x}"), 16)

    # memory
    def readl(self, addr):
        return int(self.cmd(f"readl {addr:#x}"), 16)

    def writel(self, addr, v):
        self.cmd(f"writel {addr:#x} {v:#x}")

    def readq(self, addr):
        return int(self.cmd(f"readq {addr:#x}"), 16)

    def writeq(self, addr, v):
        self.cmd(f"writeq {addr:#x} {v:#x}")

    def mem_write(self, addr, data):
        if len(data) <= 256:
            self.cmd(f"write {addr:#x} {len(data)} 0x{data.hex()}")
        else:
            self.cmd(f"b64write {addr:#x} {len(data)} {base64.b64encode(data).decode()}")

    def mem_read(self, addr, size):
        if size <= 256:
            return bytes.fromhex(self.cmd(f"read {addr:#x} {size}")[2:])
        return base64.b64decode(self.cmd(f"b64read {addr:#x} {size}"))


class Pci:
    """Config space of one function on bus 0 through the 0xcf8/0xcfc mechanism."""

    def __init__(self, qt, slot, func=0):
        self.qt, self.slot, self.func = qt, slot, func

    @staticmethod
    def addr(slot, func, off):
        return 0x80000000 | (slot << 11) | (func << 8) | (off & 0xFC)

    def r32(self, off):
        self.qt.outl(0xCF8, self.addr(self.slot, self.func, off))
        return self.qt.inl(0xCFC)

    def r16(self, off):
        self.qt.outl(0xCF8, self.addr(self.slot, self.func, off))
        return self.qt.inw(0xCFC + (off & 2))

    def r8(self, off):
        self.qt.outl(0xCF8, self.addr(self.slot, self.func, off))
        return self.qt.inb(0xCFC + (off & 3))

    def w32(self, off, v):
        self.qt.outl(0xCF8, self.addr(self.slot, self.func, off))
        self.qt.outl(0xCFC, v)

    def w16(self, off, v):
        self.qt.outl(0xCF8, self.addr(self.slot, self.func, off))
        self.qt.outw(0xCFC + (off & 2), v)

    def caps(self):
        out = {}
        if not self.r16(0x06) & 0x10:
            return out
        ptr = self.r8(0x34) & 0xFC
        seen = 0
        while ptr and seen < 48:
            cid = self.r8(ptr)
            out.setdefault(cid, ptr)
            ptr = self.r8(ptr + 1) & 0xFC
            seen += 1
        return out


def find_device(qt):
    for slot in range(32):
        v = Pci(qt, slot).r32(0)
        if v == (DEVICE << 16) | VENDOR:
            return slot
    return None


class Checks:
    def __init__(self, mode):
        self.mode = mode
        self.results = []

    def check(self, name, ok, detail=""):
        self.results.append((name, bool(ok), detail))
        print(f"[{self.mode}] {'PASS' if ok else 'FAIL'} {name}" + (f": {detail}" if detail else ""), flush=True)
        return ok

    @property
    def failed(self):
        return [r for r in self.results if not r[1]]


class Engine:
    def __init__(self, qt, bar0, poll_timeout):
        self.qt, self.bar0, self.poll_timeout = qt, bar0, poll_timeout
        self.last_polls = 0
        self.runs = 0  # commands started

    def r(self, reg):
        return self.qt.readl(self.bar0 + reg)

    def w(self, reg, v):
        self.qt.writel(self.bar0 + reg, v & 0xFFFFFFFF)

    def run(self, cmd, src=0, dst=0, length=0, pattern=None):
        """Programs and starts one command, polls STATUS (bounded); returns (status, errno)."""
        self.w(SRC_LO, src)
        self.w(SRC_HI, src >> 32)
        self.w(DST_LO, dst)
        self.w(DST_HI, dst >> 32)
        self.w(LEN, length)
        if pattern is not None:
            self.w(PATTERN, pattern)
        self.w(CMD, cmd)
        self.runs += 1
        deadline = time.monotonic() + self.poll_timeout
        polls = 0
        while True:
            st = self.r(STATUS)
            polls += 1
            if st == 0xFFFFFFFF:
                # QEMU answers all-ones when the region read failed (no reply from the server
                # within x-msg-timeout): the vfio-user connection is broken, stop here.
                raise QTestError(f"STATUS read all-ones after CMD {cmd} (src {src:#x} dst {dst:#x} len {length}):"
                                 " QEMU got no reply from the vfio-user server (see QEMU's stderr)")
            if st in (ST_DONE, ST_ERROR):
                break
            if time.monotonic() > deadline or polls > 1_000_000:
                break
            if polls > 20:
                time.sleep(0.001)
        self.last_polls = polls
        return st, self.r(ERRNO)


def fill_expected(pattern, n):
    p = pattern.to_bytes(4, "little")
    return (p * (n // 4 + 1))[:n]


def run_tests(qt, c, args):
    rng = random.Random(args.seed)

    slot = find_device(qt)
    if slot is None:
        c.check("device 1234:d3a0 on bus 0", False, "not found in slots 0..31")
        return c
    c.check("device 1234:d3a0 on bus 0", True, f"slot {slot:#04x}")
    pci = Pci(qt, slot)

    class_rev = pci.r32(0x08)
    c.check("class 0x088000 revision 1", class_rev == 0x08800001, f"{class_rev:#010x}")
    sub = pci.r32(0x2C)
    c.check("subsystem ids = vendor/device", sub == (DEVICE << 16) | VENDOR, f"{sub:#010x}")
    pin = pci.r8(0x3D)
    c.check("interrupt pin INTA", pin == 1, f"{pin}")
    caps = pci.caps()
    c.check("MSI and MSI-X capabilities", CAP_MSI in caps and CAP_MSIX in caps,
            "caps " + ", ".join(f"{k:#04x}@{v:#04x}" for k, v in sorted(caps.items())))

    # BAR sizing, as firmware does: all ones, read back, restore.
    sizes = {}
    for bar in (0, 1):
        off = 0x10 + 4 * bar
        pci.w32(off, 0xFFFFFFFF)
        mask = pci.r32(off)
        pci.w32(off, 0)
        sizes[bar] = (~(mask & 0xFFFFFFF0) & 0xFFFFFFFF) + 1 if mask else 0
        kind = mask & 0xF
        c.check(f"BAR{bar} is 4 KiB 32-bit memory", sizes[bar] == 4096 and kind == 0,
                f"mask {mask:#010x} size {sizes[bar]:#x}")
    pci.w32(0x10, BAR0_ADDR)
    pci.w32(0x14, BAR1_ADDR)
    pci.w16(0x04, pci.r16(0x04) | (0x0002 if args.no_bus_master else 0x0006))  # memory (+ bus master)
    bar0 = pci.r32(0x10) & 0xFFFFFFF0
    want_cmd = 2 if args.no_bus_master else 6
    c.check("BAR0 placed, memory and bus master on", bar0 == BAR0_ADDR and pci.r16(0x04) & 6 == want_cmd,
            f"BAR0 {bar0:#x} command {pci.r16(0x04):#06x}")

    e = Engine(qt, BAR0_ADDR, args.poll_timeout)
    ident = e.r(ID)
    if not c.check("ID register", ident == ID_VALUE, f"{ident:#010x}"):
        return c
    c.check("VERSION register", e.r(VERSION) == 1, f"{e.r(VERSION)}")
    count0 = e.r(COUNT)

    def copy_check(name, src, dst, n):
        data = rng.randbytes(n)
        guard = 64
        qt.mem_write(src, data)
        before = rng.randbytes(n + 2 * guard)
        qt.mem_write(dst - guard, before)
        t0 = time.monotonic()
        st, err = e.run(CMD_COPY, src, dst, n)
        dt = time.monotonic() - t0
        got = qt.mem_read(dst - guard, n + 2 * guard)
        ok = (st == ST_DONE and err == 0 and got[guard:guard + n] == data
              and got[:guard] == before[:guard] and got[guard + n:] == before[guard + n:])
        detail = f"{n} bytes {src:#x}->{dst:#x} status {st} errno {err} ({dt * 1000:.1f} ms, {e.last_polls} polls)"
        if st == ST_DONE and got[guard:guard + n] != data:
            first = next(i for i in range(n) if got[guard + i] != data[i])
            detail += f"; first wrong byte at +{first:#x}"
        c.check(name, ok, detail)
        return data

    def crc_check(name, src, data):
        st, err = e.run(CMD_CRC32, src, 0, len(data))
        res = e.r(RESULT)
        want = zlib.crc32(data) & 0xFFFFFFFF
        c.check(name, st == ST_DONE and err == 0 and res == want,
                f"{len(data)} bytes at {src:#x}: RESULT {res:#010x}, zlib {want:#010x}, status {st} errno {err}")

    def fill_check(name, dst, n, pattern):
        guard = 64
        before = rng.randbytes(n + 2 * guard)
        qt.mem_write(dst - guard, before)
        st, err = e.run(CMD_FILL, 0, dst, n, pattern=pattern)
        got = qt.mem_read(dst - guard, n + 2 * guard)
        want = fill_expected(pattern, n)
        ok = (st == ST_DONE and err == 0 and got[guard:guard + n] == want
              and got[:guard] == before[:guard] and got[guard + n:] == before[guard + n:])
        c.check(name, ok, f"{n} bytes at {dst:#x} pattern {pattern:#010x} status {st} errno {err}")

    def error_check(name, cmd, src, dst, n, want_errno):
        look = dst and n > 0
        if look:
            probe = qt.mem_read(dst, min(n, 256))
        st, err = e.run(cmd, src, dst, n, pattern=0x11223344)
        unchanged = True
        if look:
            unchanged = qt.mem_read(dst, min(n, 256)) == probe
        c.check(name, st == ST_ERROR and err == want_errno and unchanged,
                f"status {st} errno {err} (want 3 / {want_errno}), destination unchanged: {unchanged}")

    # The three commands on small and page-crossing ranges.
    data = copy_check("COPY 4 KiB page-aligned", RAM_SRC, RAM_DST, 4096)
    crc_check("CRC32 4 KiB", RAM_SRC, data)
    data = copy_check("COPY 12345 bytes, unaligned, crossing pages", RAM_SRC + 0x7FD, RAM_DST + 0x123, 12345)
    crc_check("CRC32 12345 bytes unaligned", RAM_SRC + 0x7FD, data)
    fill_check("FILL 4099 bytes unaligned", RAM_DST + 0x3, 4099, 0xDEADBEEF)
    fill_check("FILL 1 byte", RAM_DST + 0x1001, 1, 0x000000A5)
    # Overlapping copy behaves like memmove.
    base = RAM_SRC + 0x100000
    ov = rng.randbytes(8192)
    qt.mem_write(base, ov)
    st, err = e.run(CMD_COPY, base, base + 100, 8000)
    got = qt.mem_read(base, 8192)
    want = bytearray(ov)
    want[100:8100] = ov[0:8000]
    c.check("COPY overlapping (memmove)", st == ST_DONE and got == bytes(want), f"status {st} errno {err}")

    # Error paths: the device must fail cleanly and write nothing.
    error_check("COPY from unmapped IOVA fails EINVAL", CMD_COPY, UNMAPPED, RAM_DST, 4096, EINVAL)
    error_check("FILL into read-only BIOS ROM fails EPERM", CMD_FILL, 0, ROM_ADDR, 256, EPERM)
    error_check("LEN 0 fails EINVAL", CMD_COPY, RAM_SRC, RAM_DST, 0, EINVAL)
    if not args.no_irq:
        irq_tests(qt, c, pci, caps, e, rng)

    # Last, as the checks most likely to break the connection (see README.md): larger than
    # max_data_xfer_size (1 MiB), so several DMA_READ/WRITE messages when guest RAM is not
    # shared.
    n_big = args.big
    # FILL only writes guest memory (DMA_WRITE messages, vdma -> QEMU, when RAM is not
    # shared); COPY and CRC32 also read it (DMA_READ, whose replies QEMU sends).
    fill_check(f"FILL {n_big} bytes (> 1 MiB)", RAM_BIG_DST + 0x20, n_big, 0x5A6B7C8D)
    data = copy_check(f"COPY {n_big} bytes (> 1 MiB)", RAM_BIG_SRC + 0x10, RAM_BIG_DST + 0x20, n_big)
    crc_check(f"CRC32 {n_big} bytes", RAM_BIG_SRC + 0x10, data)
    count = e.r(COUNT)
    c.check("COUNT counts every command", count - count0 == e.runs, f"COUNT {count0} -> {count}, started {e.runs}")
    return c


def wait_mem(qt, addr, value, timeout):
    deadline = time.monotonic() + timeout
    while True:
        v = qt.readl(addr)
        if v == value or time.monotonic() > deadline:
            return v
        time.sleep(0.002)


def irq_tests(qt, c, pci, caps, e, rng):
    """Completion interrupts: MSI-X, then MSI, then INTx."""
    e.w(IRQ_STATUS, 1)
    e.w(IRQ_ENABLE, 1)

    # MSI-X: table in the BAR the capability names; the message is a write to guest RAM.
    if CAP_MSIX in caps:
        m = caps[CAP_MSIX]
        table = pci.r32(m + 4)
        bir, toff = table & 7, table & ~7
        bar_addr = pci.r32(0x10 + 4 * bir) & 0xFFFFFFF0
        ctrl = pci.r16(m + 2)
        pci.w16(m + 2, (ctrl | 0x8000 | 0x4000))  # enable + function mask while programming
        entry = bar_addr + toff
        qt.writel(RAM_MSG, 0)
        qt.writel(entry + 0, RAM_MSG)
        qt.writel(entry + 4, 0)
        qt.writel(entry + 8, 0x5A5A0001)
        qt.writel(entry + 12, 0)  # unmasked
        pci.w16(m + 2, (ctrl | 0x8000) & ~0x4000)
        st, err = e.run(CMD_COPY, RAM_SRC, RAM_DST, 64)
        v = wait_mem(qt, RAM_MSG, 0x5A5A0001, 5)
        irqst = e.r(IRQ_STATUS)
        c.check("MSI-X completion interrupt reaches guest memory", st == ST_DONE and v == 0x5A5A0001 and irqst & 1,
                f"table BAR{bir}+{toff:#x}, message word {v:#010x}, IRQ_STATUS {irqst}, status {st}")
        e.w(IRQ_STATUS, 1)
        pci.w16(m + 2, ctrl & ~0x8000)

    # MSI
    if CAP_MSI in caps:
        m = caps[CAP_MSI]
        ctrl = pci.r16(m + 2)
        is64 = bool(ctrl & 0x80)
        qt.writel(RAM_MSG + 16, 0)
        pci.w32(m + 4, RAM_MSG + 16)
        if is64:
            pci.w32(m + 8, 0)
            pci.w16(m + 12, 0x4D51)
        else:
            pci.w16(m + 8, 0x4D51)
        pci.w16(m + 2, (ctrl & ~0x70) | 1)
        st, err = e.run(CMD_COPY, RAM_SRC, RAM_DST, 64)
        v = wait_mem(qt, RAM_MSG + 16, 0x4D51, 5)
        irqst = e.r(IRQ_STATUS)
        c.check("MSI completion interrupt reaches guest memory", st == ST_DONE and (v & 0xFFFF) == 0x4D51 and irqst & 1,
                f"{'64' if is64 else '32'}-bit, message word {v:#010x}, IRQ_STATUS {irqst}, status {st}")
        e.w(IRQ_STATUS, 1)
        pci.w16(m + 2, ctrl & ~1)

    # INTx: the I/O APIC inputs are intercepted; a raise shows up as an async line.
    pci.w16(0x04, pci.r16(0x04) & ~0x0400)  # INTx not disabled
    del qt.irqs[:]
    st, err = e.run(CMD_COPY, RAM_SRC, RAM_DST, 64)
    deadline = time.monotonic() + 5
    while not any(k == "raise" for k, _ in qt.irqs) and time.monotonic() < deadline:
        qt.cmd("endianness")  # any command: lets async IRQ lines arrive
        time.sleep(0.002)
    raised = [n for k, n in qt.irqs if k == "raise"]
    irqst = e.r(IRQ_STATUS)
    status_bit = pci.r16(0x06) & 0x08
    c.check("INTx completion interrupt raises an I/O APIC input", st == ST_DONE and raised,
            f"IRQ lines {qt.irqs}, IRQ_STATUS {irqst}, config status INTx bit {bool(status_bit)}")
    # Level-triggered: QEMU lowers the line and unmasks at the next BAR access (its EOI);
    # the device raises it again while IRQ_STATUS is set. Once cleared it must stay low.
    e.w(IRQ_STATUS, 1)
    e.r(ID)
    time.sleep(0.05)
    qt.cmd("endianness")
    e.r(ID)
    last = [k for k, n in qt.irqs if raised and n == raised[0]][-1:]
    status_bit = pci.r16(0x06) & 0x08
    c.check("INTx deasserted after IRQ_STATUS is cleared", last == ["lower"] and not status_bit,
            f"last event {last}, config status INTx bit {bool(status_bit)}")
    e.w(IRQ_ENABLE, 0)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--qtest", required=True, help="QEMU's qtest socket (server side is QEMU)")
    ap.add_argument("--mode", default="shared", help="label for the output lines")
    ap.add_argument("--connect-timeout", type=float, default=30.0)
    ap.add_argument("--poll-timeout", type=float, default=20.0, help="seconds to wait for one command")
    ap.add_argument("--big", type=int, default=3 * 1024 * 1024 + 5, help="size of the large COPY/CRC32")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-irq", action="store_true", help="skip the interrupt checks")
    ap.add_argument("--log", help="write the qtest conversation here")
    ap.add_argument("--no-bus-master", action="store_true",
                    help="leave bus mastering off (an experiment: DMA is expected to fail)")
    args = ap.parse_args()

    c = Checks(args.mode)
    broken = False
    try:
        qt = QTest(args.qtest, args.connect_timeout)
        if args.log:
            qt.log = open(args.log, "w")
        # Intercept the I/O APIC's inputs before anything can raise them.
        qt.cmd("irq_intercept_in ioapic")
        run_tests(qt, c, args)
    except (QTestError, OSError, ValueError) as ex:
        c.check("driver (stopped here)", False, str(ex))
        broken = True
    n, bad = len(c.results), len(c.failed)
    print(f"[{args.mode}] {n - bad} passed, {bad} failed", flush=True)
    return 2 if broken else 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
