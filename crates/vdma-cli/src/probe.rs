//! `vdma probe`: what a vfio-user server offers, and its PCI config space decoded the way
//! `lspci -vv` prints a device.
//!
//! Three steps, so that the decoding is testable without a server:
//!
//! - [`collect`] talks to the server through a [`Client`]: the negotiated version and
//!   capabilities, DEVICE_GET_INFO, every region and interrupt type, config space (region 7),
//!   and the BAR sizes (the standard write-all-ones, read-back, restore sequence, done by
//!   [`size_bars`] through any [`ConfigAccess`]). What fails for one region or interrupt type is
//!   recorded in the [`Report`] and the rest goes on.
//! - [`render`] turns a [`Report`] into text.
//! - [`decode_config`] turns config-space bytes and BAR sizes into `lspci -vv` style lines.
//!   It trusts nothing in the bytes: every read is bounds-checked and the capability lists are
//!   walked with a visited set and a bound, so a hostile server cannot make it loop or panic.

use std::fmt::Write as _;

use vdma_user::client::{Client, ClientError};
use vdma_user::protocol::{
    Capabilities, DmaLayout, RegionCap, RegionInfoReply, DEVICE_FLAGS_PCI, DEVICE_FLAGS_RESET,
    IRQ_INFO_AUTOMASKED, IRQ_INFO_EVENTFD, IRQ_INFO_MASKABLE, IRQ_INFO_NORESIZE,
    REGION_INFO_FLAG_CAPS, REGION_INFO_FLAG_MMAP, REGION_INFO_FLAG_READ, REGION_INFO_FLAG_WRITE,
};

/// The index of the config-space region of a vfio PCI device.
pub const CONFIG_REGION: u32 = 7;

/// The most regions and interrupt types [`collect`] asks about (a server may claim 2^32).
pub const MAX_LISTED: u32 = 64;

/// The most config-space bytes [`collect`] reads (PCI Express: 4 KiB).
pub const CONFIG_MAX: u64 = 4096;

/// The most capabilities followed in one list (as Linux's `PCI_FIND_CAP_TTL`).
const CAP_TTL: usize = 48;

/// Why `vdma probe` could not probe at all (what fails for one region or interrupt type is
/// recorded in the [`Report`] instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// Connecting or negotiating failed.
    #[error("cannot connect to {path}: {source}")]
    Connect {
        /// The socket path.
        path: String,
        /// What failed.
        source: ClientError,
    },
    /// DEVICE_GET_INFO failed.
    #[error("DEVICE_GET_INFO failed: {0}")]
    DeviceInfo(ClientError),
}

impl ProbeError {
    /// The errno this error maps to.
    pub fn errno(&self) -> i32 {
        match self {
            ProbeError::Connect { source, .. } | ProbeError::DeviceInfo(source) => source.errno(),
        }
    }
}

/// One interrupt type as DEVICE_GET_IRQ_INFO describes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IrqReport {
    /// Number of vectors.
    pub count: u32,
    /// `IRQ_INFO_*` flags.
    pub flags: u32,
}

/// What the BAR sizing sequence read back: for each register, the value after writing all
/// ones (`None`: not sized). The upper half of a 64-bit BAR has its own entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BarSizing {
    /// BARs 0 to 5 (config offsets 0x10 to 0x24).
    pub bars: [Option<u32>; 6],
    /// The expansion ROM register (offset 0x30), after writing the address mask.
    pub rom: Option<u32>,
}

/// Everything `vdma probe` learnt.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The server's version, major and minor.
    pub version: (u16, u16),
    /// The server's capabilities, if it sent any.
    pub capabilities: Option<Capabilities>,
    /// The DMA_READ/DMA_WRITE layout the client speaks.
    pub dma_layout: DmaLayout,
    /// DEVICE_GET_INFO flags.
    pub device_flags: u32,
    /// DEVICE_GET_INFO number of regions.
    pub num_regions: u32,
    /// DEVICE_GET_INFO number of interrupt types.
    pub num_irqs: u32,
    /// Each region asked about, or why asking failed.
    pub regions: Vec<(u32, Result<RegionInfoReply, String>)>,
    /// Each interrupt type asked about, or why asking failed.
    pub irqs: Vec<(u32, Result<IrqReport, String>)>,
    /// Config space as read (`None`: the device has no config region).
    pub config: Option<Result<Vec<u8>, String>>,
    /// What the BAR sizing read back.
    pub sizing: BarSizing,
    /// Problems met along the way (sizing failures, counts cut short).
    pub notes: Vec<String>,
}

impl Report {
    /// How many steps failed (regions, interrupt types, config space, sizing).
    pub fn errors(&self) -> usize {
        self.regions.iter().filter(|(_, r)| r.is_err()).count()
            + self.irqs.iter().filter(|(_, r)| r.is_err()).count()
            + usize::from(matches!(self.config, Some(Err(_))))
            + self.notes.len()
    }
}

/// Access to a device's config space, 1 to 4 bytes at a time.
pub trait ConfigAccess {
    /// Reads `buf.len()` bytes at `offset`.
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String>;
    /// Writes `data` at `offset`.
    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String>;
}

/// Config space through a client's REGION_READ/REGION_WRITE of region 7.
struct ClientConfig<'a>(&'a Client);

impl ConfigAccess for ClientConfig<'_> {
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
        self.0
            .region_read_into(CONFIG_REGION, offset, buf)
            .map_err(|e| e.to_string())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
        self.0
            .region_write(CONFIG_REGION, offset, data)
            .map_err(|e| e.to_string())
    }
}

/// Asks the server behind `client` everything [`render`] prints. Fails only if
/// DEVICE_GET_INFO does; anything else that fails is recorded in the report.
pub fn collect(client: &Client) -> Result<Report, ProbeError> {
    let version = client.server_version();
    let info = client.device_info().map_err(ProbeError::DeviceInfo)?;
    let mut report = Report {
        version: (version.major, version.minor),
        capabilities: version.capabilities.clone(),
        dma_layout: client.dma_layout(),
        device_flags: info.flags.get(),
        num_regions: info.num_regions.get(),
        num_irqs: info.num_irqs.get(),
        ..Report::default()
    };
    for index in 0..report.num_regions.min(MAX_LISTED) {
        let region = client
            .region_info(index)
            .map(|r| r.info)
            .map_err(|e| e.to_string());
        report.regions.push((index, region));
    }
    for index in 0..report.num_irqs.min(MAX_LISTED) {
        let irq = client
            .irq_info(index)
            .map(|i| IrqReport {
                count: i.count.get(),
                flags: i.flags.get(),
            })
            .map_err(|e| e.to_string());
        report.irqs.push((index, irq));
    }
    let config_region = report.regions.iter().find_map(|(i, r)| match r {
        Ok(info) if *i == CONFIG_REGION && info.size > 0 => Some(info.clone()),
        _ => None,
    });
    if report.device_flags & DEVICE_FLAGS_PCI == 0 {
        return Ok(report);
    }
    let Some(config_region) = config_region else {
        return Ok(report);
    };
    if config_region.flags & REGION_INFO_FLAG_READ == 0 {
        report.config = Some(Err("the config region is not readable".into()));
        return Ok(report);
    }
    let len = config_region.size.min(CONFIG_MAX) as usize;
    match client.region_read(CONFIG_REGION, 0, len) {
        Ok(bytes) => {
            if config_region.flags & REGION_INFO_FLAG_WRITE != 0 {
                let (sizing, notes) = size_bars(&mut ClientConfig(client), &bytes);
                report.sizing = sizing;
                report.notes.extend(notes);
            }
            report.config = Some(Ok(bytes));
        }
        Err(e) => report.config = Some(Err(e.to_string())),
    }
    Ok(report)
}

/// Sizes the BARs and the expansion ROM of the function whose config space is `config`
/// (as read before): for each register, writes all ones, reads the value back and writes
/// the original value again (both halves of a 64-bit BAR together), with memory and I/O
/// decoding turned off meanwhile if they were on. Returns what was read back, and a note for
/// each step that failed (the original values are written back whatever failed).
pub fn size_bars(access: &mut dyn ConfigAccess, config: &[u8]) -> (BarSizing, Vec<String>) {
    let mut sizing = BarSizing::default();
    let mut notes = Vec::new();
    let Some(header_type) = byte(config, 0x0e) else {
        return (sizing, notes);
    };
    let bar_count = bar_count(header_type);
    let command = word(config, 0x04).unwrap_or(0);
    let decoding = command & (COMMAND_IO | COMMAND_MEMORY);
    if decoding != 0 {
        let off = command & !(COMMAND_IO | COMMAND_MEMORY);
        if let Err(e) = access.write(0x04, &off.to_le_bytes()) {
            notes.push(format!("turning decoding off for BAR sizing failed: {e}"));
            return (sizing, notes);
        }
    }
    let mut i = 0;
    while i < bar_count {
        let offset = 0x10 + 4 * i;
        let Some(low) = dword(config, offset) else {
            break;
        };
        let is64 = low & 1 == 0 && (low >> 1) & 3 == 2 && i + 1 < bar_count;
        let mut regs = vec![(i, offset, low)];
        if is64 {
            regs.push((i + 1, offset + 4, dword(config, offset + 4).unwrap_or(0)));
        }
        let mut failed = false;
        for &(_, off, _) in &regs {
            if let Err(e) = access.write(off as u64, &u32::MAX.to_le_bytes()) {
                notes.push(format!("BAR {i}: writing all ones failed: {e}"));
                failed = true;
            }
        }
        if !failed {
            for &(slot, off, _) in &regs {
                match read_u32(access, off as u64) {
                    Ok(value) => sizing.bars[slot] = Some(value),
                    Err(e) => notes.push(format!("BAR {slot}: reading back failed: {e}")),
                }
            }
        }
        for &(slot, off, original) in &regs {
            if let Err(e) = access.write(off as u64, &original.to_le_bytes()) {
                notes.push(format!(
                    "BAR {slot}: restoring {original:#010x} failed: {e}"
                ));
            }
        }
        i += regs.len();
    }
    if header_type & 0x7f == 0 {
        if let Some(original) = dword(config, ROM_OFFSET) {
            match access.write(ROM_OFFSET as u64, &ROM_ADDRESS_MASK.to_le_bytes()) {
                Ok(()) => match read_u32(access, ROM_OFFSET as u64) {
                    Ok(value) => sizing.rom = Some(value),
                    Err(e) => notes.push(format!("expansion ROM: reading back failed: {e}")),
                },
                Err(e) => notes.push(format!("expansion ROM: writing the mask failed: {e}")),
            }
            if let Err(e) = access.write(ROM_OFFSET as u64, &original.to_le_bytes()) {
                notes.push(format!(
                    "expansion ROM: restoring {original:#010x} failed: {e}"
                ));
            }
        }
    }
    if decoding != 0 {
        if let Err(e) = access.write(0x04, &command.to_le_bytes()) {
            notes.push(format!("restoring the command register failed: {e}"));
        }
    }
    (sizing, notes)
}

fn read_u32(access: &mut dyn ConfigAccess, offset: u64) -> Result<u32, String> {
    let mut buf = [0u8; 4];
    access.read(offset, &mut buf)?;
    Ok(u32::from_le_bytes(buf))
}

/// The whole report as text: the negotiation, the device, its regions and interrupt types,
/// then config space decoded by [`decode_config`].
pub fn render(report: &Report) -> String {
    let mut out = String::new();
    let (major, minor) = report.version;
    let layout = match report.dma_layout {
        DmaLayout::Spec => "specification",
        DmaLayout::Qemu => "QEMU",
    };
    let _ = writeln!(
        out,
        "vfio-user version {major}.{minor}, DMA layout: {layout}"
    );
    let _ = writeln!(
        out,
        "Server capabilities: {}",
        describe_capabilities(report.capabilities.as_ref())
    );
    let _ = writeln!(
        out,
        "Device: flags {:#x} ({}), {} regions, {} interrupt types",
        report.device_flags,
        flag_names(
            report.device_flags,
            &[(DEVICE_FLAGS_RESET, "RESET"), (DEVICE_FLAGS_PCI, "PCI")]
        ),
        report.num_regions,
        report.num_irqs
    );
    let pci = report.device_flags & DEVICE_FLAGS_PCI != 0;
    let _ = writeln!(out, "Regions:");
    for (index, region) in &report.regions {
        let name = region_name(*index, pci);
        match region {
            Ok(r) if r.size == 0 => {
                let _ = writeln!(out, "  {index} {name}: absent");
            }
            Ok(r) => {
                let _ = writeln!(
                    out,
                    "  {index} {name}: size {:#x} [{}], flags {:#x} ({})",
                    r.size,
                    size_text(r.size),
                    r.flags,
                    flag_names(
                        r.flags,
                        &[
                            (REGION_INFO_FLAG_READ, "READ"),
                            (REGION_INFO_FLAG_WRITE, "WRITE"),
                            (REGION_INFO_FLAG_MMAP, "MMAP"),
                            (REGION_INFO_FLAG_CAPS, "CAPS"),
                        ]
                    )
                );
                if r.flags & REGION_INFO_FLAG_MMAP != 0 {
                    let sparse = r.caps.iter().find_map(|c| match c {
                        RegionCap::SparseMmap(areas) => Some(areas),
                        _ => None,
                    });
                    let areas = match sparse {
                        Some(areas) if areas.is_empty() => "none".to_string(),
                        Some(areas) => areas
                            .iter()
                            .map(|a| format!("{:#x}+{:#x}", a.offset.get(), a.size.get()))
                            .collect::<Vec<_>>()
                            .join(", "),
                        None => "the whole region".to_string(),
                    };
                    let _ = writeln!(
                        out,
                        "      mmap: file offset {:#x}, areas: {areas}",
                        r.offset
                    );
                }
                for cap in &r.caps {
                    match cap {
                        RegionCap::SparseMmap(_) => {}
                        RegionCap::Type { kind, subtype } => {
                            let _ = writeln!(out, "      type {kind:#x}, subtype {subtype:#x}");
                        }
                        RegionCap::Other { id, version, body } => {
                            let _ = writeln!(
                                out,
                                "      capability {id:#x} version {version} ({} bytes)",
                                body.len()
                            );
                        }
                    }
                }
            }
            Err(e) => {
                let _ = writeln!(out, "  {index} {name}: error: {e}");
            }
        }
    }
    if report.num_regions > MAX_LISTED {
        let _ = writeln!(
            out,
            "  ({} more regions not asked about)",
            report.num_regions - MAX_LISTED
        );
    }
    let _ = writeln!(out, "Interrupts:");
    for (index, irq) in &report.irqs {
        let name = irq_name(*index, pci);
        match irq {
            Ok(i) if i.count == 0 => {
                let _ = writeln!(out, "  {index} {name}: none");
            }
            Ok(i) => {
                let _ = writeln!(
                    out,
                    "  {index} {name}: count {}, flags {:#x} ({})",
                    i.count,
                    i.flags,
                    flag_names(
                        i.flags,
                        &[
                            (IRQ_INFO_EVENTFD, "EVENTFD"),
                            (IRQ_INFO_MASKABLE, "MASKABLE"),
                            (IRQ_INFO_AUTOMASKED, "AUTOMASKED"),
                            (IRQ_INFO_NORESIZE, "NORESIZE"),
                        ]
                    )
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  {index} {name}: error: {e}");
            }
        }
    }
    if report.num_irqs > MAX_LISTED {
        let _ = writeln!(
            out,
            "  ({} more interrupt types not asked about)",
            report.num_irqs - MAX_LISTED
        );
    }
    match &report.config {
        None if pci => {
            let _ = writeln!(out, "Config space: none");
        }
        None => {}
        Some(Err(e)) => {
            let _ = writeln!(out, "Config space: error: {e}");
        }
        Some(Ok(bytes)) => {
            let _ = writeln!(out, "Config space ({} bytes):", bytes.len());
            out.push_str(&decode_config(bytes, &report.sizing));
        }
    }
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    out
}

/// The capabilities, member by member (`-` for one the server left out).
fn describe_capabilities(caps: Option<&Capabilities>) -> String {
    let Some(c) = caps else {
        return "none sent (protocol defaults)".into();
    };
    fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
        v.map_or_else(|| "-".to_string(), |v| v.to_string())
    }
    let migration = match &c.migration {
        Some(m) => format!(
            "pgsize={} max_bitmap_size={}",
            opt(m.pgsize),
            opt(m.max_bitmap_size)
        ),
        None => "-".into(),
    };
    let twin = match &c.twin_socket {
        Some(t) => format!("supported={}", opt(t.supported)),
        None => "-".into(),
    };
    format!(
        "max_msg_fds={} max_data_xfer_size={} max_dma_maps={} pgsizes={} migration=({migration}) write_multiple={} twin_socket=({twin})",
        opt(c.max_msg_fds),
        opt(c.max_data_xfer_size),
        opt(c.max_dma_maps),
        c.pgsizes.map_or_else(|| "-".to_string(), |p| format!("{p:#x}")),
        opt(c.write_multiple),
    )
}

/// The names of the set bits in `flags`, and the unknown rest in hex.
fn flag_names(flags: u32, names: &[(u32, &str)]) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .filter(|(bit, _)| flags & bit != 0)
        .map(|(_, name)| (*name).to_string())
        .collect();
    let known = names.iter().fold(0, |acc, (bit, _)| acc | bit);
    if flags & !known != 0 {
        parts.push(format!("{:#x}", flags & !known));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(" ")
    }
}

/// A region's name: BAR0..5, ROM, config, VGA for a PCI device.
pub fn region_name(index: u32, pci: bool) -> String {
    match index {
        0..=5 if pci => format!("BAR{index}"),
        6 if pci => "ROM".into(),
        7 if pci => "config".into(),
        8 if pci => "VGA".into(),
        _ => format!("region{index}"),
    }
}

/// An interrupt type's name: INTx, MSI, MSI-X, ERR, REQ for a PCI device.
pub fn irq_name(index: u32, pci: bool) -> String {
    match index {
        0 if pci => "INTx".into(),
        1 if pci => "MSI".into(),
        2 if pci => "MSI-X".into(),
        3 if pci => "ERR".into(),
        4 if pci => "REQ".into(),
        _ => format!("irq{index}"),
    }
}

/// A size as lspci prints it: `4K`, `16M`, `32`.
pub fn size_text(size: u64) -> String {
    const UNITS: [&str; 7] = ["", "K", "M", "G", "T", "P", "E"];
    let mut value = size;
    let mut unit = 0;
    while value >= 1024 && value % 1024 == 0 && unit + 1 < UNITS.len() {
        value /= 1024;
        unit += 1;
    }
    format!("{value}{}", UNITS.get(unit).copied().unwrap_or("?"))
}

const COMMAND_IO: u16 = 1 << 0;
const COMMAND_MEMORY: u16 = 1 << 1;
const STATUS_CAP_LIST: u16 = 1 << 4;
const ROM_OFFSET: usize = 0x30;
const ROM_ADDRESS_MASK: u32 = 0xffff_f800;
/// The end of the standard config space (capabilities live below it).
const STANDARD_END: usize = 0x100;

fn byte(c: &[u8], at: usize) -> Option<u8> {
    c.get(at).copied()
}

fn word(c: &[u8], at: usize) -> Option<u16> {
    let b = c.get(at..at.checked_add(2)?)?;
    Some(u16::from_le_bytes([b[0], b[1]]))
}

fn dword(c: &[u8], at: usize) -> Option<u32> {
    let b = c.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// How many BARs a header type has: 6 for a device, 2 for a PCI bridge, none for others.
fn bar_count(header_type: u8) -> usize {
    match header_type & 0x7f {
        0 => 6,
        1 => 2,
        _ => 0,
    }
}

/// `+` or `-`.
fn pm(on: bool) -> char {
    if on {
        '+'
    } else {
        '-'
    }
}

/// Config space decoded as `lspci -vv` prints a device: identity and class, subsystem, the
/// command and status registers, the interrupt pin, each BAR with the size `sizing` read back,
/// the expansion ROM, and the capability lists (standard, and extended when `config` is
/// longer than 256 bytes). Every line but the first starts with a tab.
pub fn decode_config(config: &[u8], sizing: &BarSizing) -> String {
    let mut out = String::new();
    if config.len() < 0x40 {
        let _ = writeln!(
            out,
            "<config space of {} bytes: too short for a PCI header (64)>",
            config.len()
        );
        return out;
    }
    let vendor = word(config, 0x00).unwrap_or(0);
    let device = word(config, 0x02).unwrap_or(0);
    let command = word(config, 0x04).unwrap_or(0);
    let status = word(config, 0x06).unwrap_or(0);
    let revision = byte(config, 0x08).unwrap_or(0);
    let prog_if = byte(config, 0x09).unwrap_or(0);
    let subclass = byte(config, 0x0a).unwrap_or(0);
    let base_class = byte(config, 0x0b).unwrap_or(0);
    let header_type = byte(config, 0x0e).unwrap_or(0);
    let mut first = format!(
        "{} [{base_class:02x}{subclass:02x}]: Device [{vendor:04x}:{device:04x}] (rev {revision:02x})",
        class_name(base_class, subclass)
    );
    if prog_if != 0 {
        let _ = write!(first, " (prog-if {prog_if:02x})");
    }
    let _ = writeln!(out, "{first}");
    let kind = header_type & 0x7f;
    match kind {
        0 => {
            let sub_vendor = word(config, 0x2c).unwrap_or(0);
            let sub_device = word(config, 0x2e).unwrap_or(0);
            let _ = writeln!(
                out,
                "\tSubsystem: Device [{sub_vendor:04x}:{sub_device:04x}]"
            );
        }
        1 => {
            let _ = writeln!(out, "\tHeader type 01 (PCI bridge): only BARs 0-1 decoded");
        }
        other => {
            let _ = writeln!(out, "\tHeader type {other:02x}: BARs not decoded");
        }
    }
    let c = |bit: u16| pm(command & (1 << bit) != 0);
    let _ = writeln!(
        out,
        "\tControl: I/O{} Mem{} BusMaster{} SpecCycle{} MemWINV{} VGASnoop{} ParErr{} Stepping{} SERR{} FastB2B{} DisINTx{}",
        c(0), c(1), c(2), c(3), c(4), c(5), c(6), c(7), c(8), c(9), c(10)
    );
    let s = |bit: u16| pm(status & (1 << bit) != 0);
    let devsel = match (status >> 9) & 3 {
        0 => "fast",
        1 => "medium",
        2 => "slow",
        _ => "??",
    };
    let _ = writeln!(
        out,
        "\tStatus: Cap{} 66MHz{} UDF{} FastB2B{} ParErr{} DEVSEL={devsel} >TAbort{} <TAbort{} <MAbort{} >SERR{} <PERR{} INTx{}",
        s(4), s(5), s(6), s(7), s(8), s(11), s(12), s(13), s(14), s(15), s(3)
    );
    let pin = byte(config, 0x3d).unwrap_or(0);
    let line = byte(config, 0x3c).unwrap_or(0);
    if pin != 0 {
        let letter = match pin {
            1..=4 => char::from(b'A' + pin - 1),
            _ => '?',
        };
        let _ = writeln!(out, "\tInterrupt: pin {letter} routed to IRQ {line}");
    }
    decode_bars(&mut out, config, command, header_type, sizing);
    if kind == 0 {
        decode_rom(&mut out, config, sizing);
    }
    if status & STATUS_CAP_LIST != 0 {
        let pointer_at = if kind == 2 { 0x14 } else { 0x34 };
        let start = byte(config, pointer_at).unwrap_or(0);
        decode_capabilities(&mut out, config, start);
    }
    if config.len() > STANDARD_END {
        decode_extended_capabilities(&mut out, config);
    }
    out
}

/// A class code's name (the common ones by sub-class, the rest by base class).
fn class_name(base: u8, sub: u8) -> &'static str {
    match (base, sub) {
        (0x01, 0x00) => "SCSI storage controller",
        (0x01, 0x06) => "SATA controller",
        (0x01, 0x08) => "Non-Volatile memory controller",
        (0x02, 0x00) => "Ethernet controller",
        (0x03, 0x00) => "VGA compatible controller",
        (0x06, 0x00) => "Host bridge",
        (0x06, 0x04) => "PCI bridge",
        (0x08, 0x80) => "System peripheral",
        (0x0c, 0x03) => "USB controller",
        (0x00, _) => "Unclassified device",
        (0x01, _) => "Mass storage controller",
        (0x02, _) => "Network controller",
        (0x03, _) => "Display controller",
        (0x04, _) => "Multimedia controller",
        (0x05, _) => "Memory controller",
        (0x06, _) => "Bridge",
        (0x07, _) => "Communication controller",
        (0x08, _) => "Generic system peripheral",
        (0x09, _) => "Input device controller",
        (0x0a, _) => "Docking station",
        (0x0b, _) => "Processor",
        (0x0c, _) => "Serial bus controller",
        (0x0d, _) => "Wireless controller",
        (0x0e, _) => "Intelligent controller",
        (0x0f, _) => "Satellite communications controller",
        (0x10, _) => "Encryption controller",
        (0x11, _) => "Signal processing controller",
        (0x12, _) => "Processing accelerators",
        (0x13, _) => "Non-Essential Instrumentation",
        (0x40, _) => "Coprocessor",
        (0xff, _) => "Unassigned class",
        _ => "Unknown class",
    }
}

/// The `Region n:` lines.
fn decode_bars(out: &mut String, config: &[u8], command: u16, header_type: u8, sizing: &BarSizing) {
    let count = bar_count(header_type);
    let mut i = 0;
    while i < count {
        let offset = 0x10 + 4 * i;
        let value = dword(config, offset).unwrap_or(0);
        let mask = sizing.bars.get(i).copied().flatten();
        if value & 1 == 1 {
            // I/O space.
            let address = value & !3;
            let size = mask.and_then(|m| lowest_bit(u64::from(m & !3)));
            if mask.is_some() && size.is_none() {
                i += 1;
                continue;
            }
            if mask.is_none() && value == 0 {
                i += 1;
                continue;
            }
            let _ = write!(out, "\tRegion {i}: I/O ports at ");
            write_address(out, u64::from(address), true);
            if command & COMMAND_IO == 0 {
                out.push_str(" [disabled]");
            }
            write_size(out, size);
            i += 1;
            continue;
        }
        let mem_type = (value >> 1) & 3;
        let prefetchable = value & 8 != 0;
        let is64 = mem_type == 2 && i + 1 < count;
        let (address, full_mask) = if is64 {
            let high = dword(config, offset + 4).unwrap_or(0);
            let high_mask = sizing.bars.get(i + 1).copied().flatten();
            let m = match (mask, high_mask) {
                (Some(lo), Some(hi)) => Some(u64::from(hi) << 32 | u64::from(lo & !0xf)),
                _ => None,
            };
            (u64::from(high) << 32 | u64::from(value & !0xf), m)
        } else {
            (u64::from(value & !0xf), mask.map(|m| u64::from(m & !0xf)))
        };
        let step = if is64 { 2 } else { 1 };
        let size = full_mask.and_then(lowest_bit);
        if (full_mask.is_some() && size.is_none()) || (full_mask.is_none() && value == 0) {
            // Not implemented (reads back 0), or never sized and empty.
            i += step;
            continue;
        }
        let width = match mem_type {
            0 => "32-bit",
            1 => "low-1M",
            2 => "64-bit",
            _ => "type 3",
        };
        let _ = write!(out, "\tRegion {i}: Memory at ");
        write_address(out, address, false);
        let _ = write!(
            out,
            " ({width}, {}prefetchable)",
            if prefetchable { "" } else { "non-" }
        );
        if command & COMMAND_MEMORY == 0 {
            out.push_str(" [disabled]");
        }
        write_size(out, size);
        i += step;
    }
}

/// The `Expansion ROM at` line.
fn decode_rom(out: &mut String, config: &[u8], sizing: &BarSizing) {
    let value = dword(config, ROM_OFFSET).unwrap_or(0);
    let size = sizing
        .rom
        .and_then(|m| lowest_bit(u64::from(m & ROM_ADDRESS_MASK)));
    if size.is_none() && (sizing.rom.is_some() || value == 0) {
        return;
    }
    let _ = write!(out, "\tExpansion ROM at ");
    write_address(out, u64::from(value & ROM_ADDRESS_MASK), false);
    if value & 1 == 0 {
        out.push_str(" [disabled]");
    }
    write_size(out, size);
}

/// An address as lspci prints it: at least 8 hex digits for memory, 4 for I/O ports.
fn write_address(out: &mut String, address: u64, io: bool) {
    if address == 0 {
        out.push_str("<unassigned>");
    } else if io {
        let _ = write!(out, "{address:04x}");
    } else {
        let _ = write!(out, "{address:08x}");
    }
}

fn write_size(out: &mut String, size: Option<u64>) {
    match size {
        Some(size) => {
            let _ = writeln!(out, " [size={}]", size_text(size));
        }
        None => out.push('\n'),
    }
}

/// The size a BAR's read-back mask decodes: its lowest set address bit.
fn lowest_bit(mask: u64) -> Option<u64> {
    (mask != 0).then(|| mask & mask.wrapping_neg())
}

/// Walks the standard capability list from `start`: each pointer must lie past the header,
/// leave room for the capability's id and next pointer below 0x100 and inside `config`, and
/// not have been visited; at most [`CAP_TTL`] capabilities.
fn decode_capabilities(out: &mut String, config: &[u8], start: u8) {
    let end = config.len().min(STANDARD_END);
    let mut visited = [false; STANDARD_END / 4];
    let mut at = usize::from(start & 0xfc);
    for _ in 0..CAP_TTL {
        if at == 0 {
            return;
        }
        if at < 0x40 {
            let _ = writeln!(out, "\tCapabilities: [{at:02x}] <pointer into the header>");
            return;
        }
        if at + 2 > end {
            let _ = writeln!(out, "\tCapabilities: [{at:02x}] <pointer out of range>");
            return;
        }
        let seen = visited.get_mut(at / 4);
        match seen {
            Some(seen) if *seen => {
                let _ = writeln!(out, "\tCapabilities: [{at:02x}] <chain looped>");
                return;
            }
            Some(seen) => *seen = true,
            None => return,
        }
        let id = byte(config, at).unwrap_or(0);
        let next = byte(config, at + 1).unwrap_or(0);
        let _ = write!(out, "\tCapabilities: [{at:02x}] ");
        decode_capability(out, config, at, id, end);
        at = usize::from(next & 0xfc);
    }
    if at != 0 {
        let _ = writeln!(
            out,
            "\tCapabilities: <chain longer than {CAP_TTL} capabilities>"
        );
    }
}

/// One standard capability, after its `Capabilities: [xx] ` prefix; reads only below `end`.
fn decode_capability(out: &mut String, config: &[u8], at: usize, id: u8, end: usize) {
    let c = &config[..end.min(config.len())];
    let truncated = |out: &mut String, name: &str| {
        let _ = writeln!(out, "{name} <truncated>");
    };
    match id {
        0x01 => match (word(c, at + 2), word(c, at + 4)) {
            (Some(pmc), Some(pmcsr)) => {
                let _ = writeln!(out, "Power Management version {}", pmc & 7);
                let _ = writeln!(out, "\t\tStatus: D{}", pmcsr & 3);
            }
            _ => truncated(out, "Power Management"),
        },
        0x05 => decode_msi(out, c, at),
        0x09 => match byte(c, at + 2) {
            Some(len) => {
                let _ = writeln!(out, "Vendor Specific Information: Len={len:02x} <?>");
            }
            None => truncated(out, "Vendor Specific Information"),
        },
        0x10 => match word(c, at + 2) {
            Some(caps) => {
                let kind = match (caps >> 4) & 0xf {
                    0 => "Endpoint",
                    1 => "Legacy Endpoint",
                    4 => "Root Port",
                    5 => "Upstream Port",
                    6 => "Downstream Port",
                    7 => "PCI-Express to PCI/PCI-X Bridge",
                    8 => "PCI/PCI-X to PCI-Express Bridge",
                    9 => "Root Complex Integrated Endpoint",
                    10 => "Root Complex Event Collector",
                    _ => "Unknown type",
                };
                let _ = writeln!(
                    out,
                    "Express (v{}) {kind}, MSI {:02x}",
                    caps & 0xf,
                    (caps >> 9) & 0x1f
                );
            }
            None => truncated(out, "Express"),
        },
        0x11 => decode_msix(out, c, at),
        _ => {
            let name = match id {
                0x02 => "AGP",
                0x03 => "Vital Product Data",
                0x04 => "Slot Identification",
                0x06 => "CompactPCI hot-swap",
                0x07 => "PCI-X",
                0x08 => "HyperTransport",
                0x0a => "Debug port",
                0x0b => "CompactPCI central resource control",
                0x0c => "PCI Hot-plug",
                0x0d => "Subsystem",
                0x0e => "AGP3",
                0x0f => "Secure device",
                0x12 => "SATA HBA",
                0x13 => "PCI Advanced Features",
                0x14 => "Enhanced Allocation",
                0x15 => "Flattening Portal Bridge",
                _ => "",
            };
            if name.is_empty() {
                let _ = writeln!(out, "Capability #{id:02x}");
            } else {
                let _ = writeln!(out, "{name}");
            }
        }
    }
}

/// `MSI: Enable- Count=1/1 Maskable- 64bit+`, its address and data, and the mask bits.
fn decode_msi(out: &mut String, c: &[u8], at: usize) {
    let Some(control) = word(c, at + 2) else {
        let _ = writeln!(out, "MSI: <truncated>");
        return;
    };
    let is64 = control & (1 << 7) != 0;
    let maskable = control & (1 << 8) != 0;
    let _ = writeln!(
        out,
        "MSI: Enable{} Count={}/{} Maskable{} 64bit{}",
        pm(control & 1 != 0),
        1u32 << ((control >> 4) & 7),
        1u32 << ((control >> 1) & 7),
        pm(maskable),
        pm(is64)
    );
    let (address, data_at) = if is64 {
        match (dword(c, at + 4), dword(c, at + 8)) {
            (Some(lo), Some(hi)) => (
                Some(format!("{:016x}", u64::from(hi) << 32 | u64::from(lo))),
                at + 12,
            ),
            _ => (None, at + 12),
        }
    } else {
        (dword(c, at + 4).map(|lo| format!("{lo:08x}")), at + 8)
    };
    match (address, word(c, data_at)) {
        (Some(address), Some(data)) => {
            let _ = writeln!(out, "\t\tAddress: {address}  Data: {data:04x}");
        }
        _ => {
            let _ = writeln!(out, "\t\t<address and data past the end of config space>");
            return;
        }
    }
    if maskable {
        let mask_at = if is64 { at + 0x10 } else { at + 0x0c };
        match (dword(c, mask_at), dword(c, mask_at + 4)) {
            (Some(mask), Some(pending)) => {
                let _ = writeln!(out, "\t\tMasking: {mask:08x}  Pending: {pending:08x}");
            }
            _ => {
                let _ = writeln!(out, "\t\t<mask bits past the end of config space>");
            }
        }
    }
}

/// `MSI-X: Enable- Count=1 Masked-`, the vector table and the PBA.
fn decode_msix(out: &mut String, c: &[u8], at: usize) {
    let Some(control) = word(c, at + 2) else {
        let _ = writeln!(out, "MSI-X: <truncated>");
        return;
    };
    let _ = writeln!(
        out,
        "MSI-X: Enable{} Count={} Masked{}",
        pm(control & (1 << 15) != 0),
        (control & 0x7ff) + 1,
        pm(control & (1 << 14) != 0)
    );
    for (name, reg) in [("Vector table", at + 4), ("PBA", at + 8)] {
        match dword(c, reg) {
            Some(v) => {
                let _ = writeln!(out, "\t\t{name}: BAR={} offset={:08x}", v & 7, v & !7);
            }
            None => {
                let _ = writeln!(out, "\t\t{name}: <past the end of config space>");
            }
        }
    }
}

/// Walks the extended capability list from 0x100: headers dword aligned, at or past 0x100,
/// inside `config`, each visited once, at most one per dword.
fn decode_extended_capabilities(out: &mut String, config: &[u8]) {
    let Some(first) = dword(config, STANDARD_END) else {
        return;
    };
    if first == 0 || first == u32::MAX {
        return;
    }
    let mut visited = vec![false; config.len() / 4 + 1];
    let mut at = STANDARD_END;
    for _ in 0..visited.len() {
        let Some(header) = dword(config, at) else {
            let _ = writeln!(out, "\tCapabilities: [{at:03x}] <pointer out of range>");
            return;
        };
        match visited.get_mut(at / 4) {
            Some(seen) if *seen => {
                let _ = writeln!(out, "\tCapabilities: [{at:03x}] <chain looped>");
                return;
            }
            Some(seen) => *seen = true,
            None => return,
        }
        let id = header & 0xffff;
        let version = (header >> 16) & 0xf;
        let next = (header >> 20) as usize & !3;
        let name = match id {
            0x0001 => "Advanced Error Reporting",
            0x0002 | 0x0009 => "Virtual Channel",
            0x0003 => "Device Serial Number",
            0x0004 => "Power Budgeting",
            0x000b => "Vendor Specific Information",
            0x000d => "Access Control Services",
            0x000e => "Alternative Routing-ID Interpretation (ARI)",
            0x0010 => "Single Root I/O Virtualization (SR-IOV)",
            0x0015 => "Physical Resizable BAR",
            0x0018 => "Latency Tolerance Reporting",
            0x001e => "L1 PM Substates",
            0x0023 => "Designated Vendor-Specific",
            _ => "",
        };
        if name.is_empty() {
            let _ = writeln!(
                out,
                "\tCapabilities: [{at:03x} v{version}] Extended Capability ID {id:#06x}"
            );
        } else {
            let _ = writeln!(out, "\tCapabilities: [{at:03x} v{version}] {name}");
        }
        if next == 0 {
            return;
        }
        if next < STANDARD_END {
            let _ = writeln!(out, "\tCapabilities: [{next:03x}] <pointer below 0x100>");
            return;
        }
        at = next;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 256-byte type 0 header like the dma-engine's: ids, class 0x088000, rev 1, INTA,
    /// BAR0 32-bit memory, BAR1 (MSI-X), MSI at 0x40, MSI-X at 0x50.
    fn engine_config() -> Vec<u8> {
        let mut c = vec![0u8; 256];
        put16(&mut c, 0x00, 0x1234);
        put16(&mut c, 0x02, 0xd3a0);
        put16(&mut c, 0x06, STATUS_CAP_LIST);
        c[0x08] = 1;
        c[0x09] = 0x00;
        c[0x0a] = 0x80;
        c[0x0b] = 0x08;
        put16(&mut c, 0x2c, 0x1234);
        put16(&mut c, 0x2e, 0xd3a0);
        c[0x34] = 0x40;
        c[0x3d] = 1;
        // MSI, 64-bit, one vector.
        c[0x40] = 0x05;
        c[0x41] = 0x50;
        put16(&mut c, 0x42, 1 << 7);
        // MSI-X, one vector, table BAR1 at 0, PBA BAR1 at 0x800.
        c[0x50] = 0x11;
        c[0x51] = 0x00;
        put16(&mut c, 0x52, 0);
        put32(&mut c, 0x54, 1);
        put32(&mut c, 0x58, 0x800 | 1);
        c
    }

    fn put16(c: &mut [u8], at: usize, v: u16) {
        c[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(c: &mut [u8], at: usize, v: u32) {
        c[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn engine_sizing() -> BarSizing {
        BarSizing {
            bars: [
                Some(0xffff_f000),
                Some(0xffff_f000),
                Some(0),
                Some(0),
                Some(0),
                Some(0),
            ],
            rom: Some(0),
        }
    }

    #[test]
    fn decodes_the_engine_like_lspci() {
        let text = decode_config(&engine_config(), &engine_sizing());
        let expected = "\
System peripheral [0880]: Device [1234:d3a0] (rev 01)
\tSubsystem: Device [1234:d3a0]
\tControl: I/O- Mem- BusMaster- SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- FastB2B- DisINTx-
\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-
\tInterrupt: pin A routed to IRQ 0
\tRegion 0: Memory at <unassigned> (32-bit, non-prefetchable) [disabled] [size=4K]
\tRegion 1: Memory at <unassigned> (32-bit, non-prefetchable) [disabled] [size=4K]
\tCapabilities: [40] MSI: Enable- Count=1/1 Maskable- 64bit+
\t\tAddress: 0000000000000000  Data: 0000
\tCapabilities: [50] MSI-X: Enable- Count=1 Masked-
\t\tVector table: BAR=1 offset=00000000
\t\tPBA: BAR=1 offset=00000800
";
        assert_eq!(text, expected);
    }

    #[test]
    fn bars_of_every_kind() {
        let mut c = engine_config();
        put16(&mut c, 0x04, COMMAND_MEMORY | COMMAND_IO | 4);
        put32(&mut c, 0x10, 0xfebf_1000);
        // BAR1-2: 64-bit prefetchable at 0x1_8000_0000, 16 MiB.
        put32(&mut c, 0x14, 0x8000_000c);
        put32(&mut c, 0x18, 0x1);
        // BAR3: I/O at 0xc000, 32 ports (16-bit decoder: upper half reads 0).
        put32(&mut c, 0x1c, 0xc001);
        // ROM at 0xfeb0_0000, enabled, 256K.
        put32(&mut c, 0x30, 0xfeb0_0001);
        let sizing = BarSizing {
            bars: [
                Some(0xffff_f000),
                Some(0xff00_000c),
                Some(0xffff_ffff),
                Some(0x0000_ffe1),
                Some(0),
                None,
            ],
            rom: Some(0xfffc_0000),
        };
        let text = decode_config(&c, &sizing);
        assert!(text.contains("Control: I/O+ Mem+ BusMaster+"), "{text}");
        assert!(
            text.contains("\tRegion 0: Memory at febf1000 (32-bit, non-prefetchable) [size=4K]\n"),
            "{text}"
        );
        assert!(
            text.contains("\tRegion 1: Memory at 180000000 (64-bit, prefetchable) [size=16M]\n"),
            "{text}"
        );
        assert!(!text.contains("Region 2"), "{text}");
        assert!(
            text.contains("\tRegion 3: I/O ports at c000 [size=32]\n"),
            "{text}"
        );
        assert!(!text.contains("Region 4"), "{text}");
        assert!(!text.contains("Region 5"), "{text}");
        assert!(
            text.contains("\tExpansion ROM at feb00000 [size=256K]\n"),
            "{text}"
        );
    }

    #[test]
    fn unsized_bars_print_without_a_size() {
        let mut c = engine_config();
        put32(&mut c, 0x10, 0xfebf_1000);
        let text = decode_config(&c, &BarSizing::default());
        assert!(
            text.contains("\tRegion 0: Memory at febf1000 (32-bit, non-prefetchable) [disabled]\n"),
            "{text}"
        );
        assert!(!text.contains("Region 1"), "{text}");
    }

    #[test]
    fn msi_with_mask_bits_and_32_bit_address() {
        let mut c = engine_config();
        // 32-bit, maskable, 4 capable, 2 enabled, enabled.
        put16(&mut c, 0x42, 1 | (2 << 1) | (1 << 4) | (1 << 8));
        put32(&mut c, 0x44, 0xfee0_0000);
        put16(&mut c, 0x48, 0x4021);
        put32(&mut c, 0x4c, 0x2);
        put32(&mut c, 0x50, 0x1);
        // Move MSI-X further so the mask bits fit.
        c[0x41] = 0x60;
        c[0x60] = 0x11;
        put16(&mut c, 0x62, 0x8000 | 0x4000 | 7);
        put32(&mut c, 0x64, 0x2000 | 2);
        put32(&mut c, 0x68, 0x3000 | 2);
        let text = decode_config(&c, &engine_sizing());
        assert!(
            text.contains("[40] MSI: Enable+ Count=2/4 Maskable+ 64bit-\n\t\tAddress: fee00000  Data: 4021\n\t\tMasking: 00000002  Pending: 00000001\n"),
            "{text}"
        );
        assert!(
            text.contains("[60] MSI-X: Enable+ Count=8 Masked+\n\t\tVector table: BAR=2 offset=00002000\n\t\tPBA: BAR=2 offset=00003000\n"),
            "{text}"
        );
    }

    #[test]
    fn unknown_and_named_capabilities() {
        let mut c = engine_config();
        c[0x51] = 0x70;
        c[0x70] = 0x3f;
        c[0x71] = 0x80;
        c[0x80] = 0x09;
        c[0x81] = 0x90;
        c[0x82] = 0x0c;
        c[0x90] = 0x01;
        c[0x91] = 0x00;
        put16(&mut c, 0x92, 3);
        put16(&mut c, 0x94, 3);
        let text = decode_config(&c, &engine_sizing());
        assert!(
            text.contains("\tCapabilities: [70] Capability #3f\n"),
            "{text}"
        );
        assert!(
            text.contains("\tCapabilities: [80] Vendor Specific Information: Len=0c <?>\n"),
            "{text}"
        );
        assert!(
            text.contains("\tCapabilities: [90] Power Management version 3\n\t\tStatus: D3\n"),
            "{text}"
        );
    }

    #[test]
    fn a_capability_pointing_at_itself_stops() {
        let mut c = engine_config();
        c[0x41] = 0x40;
        let text = decode_config(&c, &engine_sizing());
        assert_eq!(text.matches("MSI:").count(), 1, "{text}");
        assert!(
            text.ends_with("\tCapabilities: [40] <chain looped>\n"),
            "{text}"
        );
    }

    #[test]
    fn a_longer_loop_stops() {
        let mut c = engine_config();
        c[0x51] = 0x40;
        let text = decode_config(&c, &engine_sizing());
        assert_eq!(text.matches("MSI:").count(), 1, "{text}");
        assert_eq!(text.matches("MSI-X:").count(), 1, "{text}");
        assert!(
            text.ends_with("\tCapabilities: [40] <chain looped>\n"),
            "{text}"
        );
    }

    #[test]
    fn every_pointer_byte_terminates_without_panic() {
        // Every start pointer and every next pointer of a config space full of capability
        // headers; the walk must end and report at most one line per dword.
        for fill in 0..=255u8 {
            let mut c = engine_config();
            for at in (0x40..0x100).step_by(2) {
                c[at] = 0x05;
                c[at + 1] = fill;
            }
            for start in 0..=255u8 {
                c[0x34] = start;
                let text = decode_config(&c, &engine_sizing());
                assert!(text.matches("Capabilities:").count() <= 49, "{text}");
            }
        }
    }

    #[test]
    fn pointers_out_of_range() {
        let mut c = engine_config();
        c[0x34] = 0x20;
        let text = decode_config(&c, &engine_sizing());
        assert!(
            text.contains("\tCapabilities: [20] <pointer into the header>\n"),
            "{text}"
        );

        // A capability at the last byte: no room for its next pointer.
        let mut c = engine_config();
        c[0x34] = 0xff;
        c[0xfc] = 0x05;
        let text = decode_config(&c, &engine_sizing());
        assert!(
            text.contains(
                "\tCapabilities: [fc] MSI: Enable- Count=1/1 Maskable- 64bit-\n\t\t<address"
            ),
            "{text}"
        );

        // Shorter config space than the pointer (64-byte header only).
        let mut c = engine_config();
        c.truncate(0x48);
        let text = decode_config(&c, &engine_sizing());
        assert!(
            text.contains("[40] MSI: Enable- Count=1/1 Maskable- 64bit+\n\t\t<address"),
            "{text}"
        );
        assert!(
            text.contains("\tCapabilities: [50] <pointer out of range>\n"),
            "{text}"
        );

        // MSI-X with its table registers past the end.
        let mut c = engine_config();
        c[0x51] = 0xf8;
        c[0xf8] = 0x11;
        let text = decode_config(&c, &engine_sizing());
        assert!(
            text.contains("[f8] MSI-X: Enable- Count=1 Masked-\n\t\tVector table: BAR=0 offset=00000000\n\t\tPBA: <past"),
            "{text}"
        );
    }

    #[test]
    fn short_config_space() {
        let text = decode_config(&[0xff; 10], &BarSizing::default());
        assert_eq!(
            text,
            "<config space of 10 bytes: too short for a PCI header (64)>\n"
        );
        let text = decode_config(&[], &BarSizing::default());
        assert!(text.contains("0 bytes"));
    }

    #[test]
    fn garbage_config_space_never_panics() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        for len in [64usize, 65, 100, 255, 256, 257, 300, 4096] {
            for _ in 0..200 {
                let c: Vec<u8> = (0..len)
                    .map(|_| {
                        seed ^= seed << 13;
                        seed ^= seed >> 7;
                        seed ^= seed << 17;
                        seed as u8
                    })
                    .collect();
                let sizing = BarSizing {
                    bars: [
                        Some(seed as u32),
                        None,
                        Some(u32::MAX),
                        Some(1),
                        None,
                        Some(0),
                    ],
                    rom: Some(seed as u32),
                };
                let _ = decode_config(&c, &sizing);
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_config_space_decodes_in_bounded_output(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..4200),
            bars in proptest::array::uniform6(proptest::option::of(proptest::num::u32::ANY)),
            rom in proptest::option::of(proptest::num::u32::ANY),
        ) {
            let text = decode_config(&bytes, &BarSizing { bars, rom });
            // Header lines, at most 6 BARs and a ROM, one line per capability (with up to
            // three detail lines) plus one for how the list ended, then one per extended
            // capability dword plus one.
            let bound = 8 + 6 + 1 + 4 * (CAP_TTL + 1) + bytes.len() / 4 + 2;
            proptest::prop_assert!(text.lines().count() <= bound, "{}", text);
        }
    }

    #[test]
    fn extended_capabilities() {
        let mut c = engine_config();
        c.resize(4096, 0);
        // AER v2 at 0x100 -> unknown 0x42 at 0x140 -> back to 0x100.
        put32(&mut c, 0x100, 0x0001 | (2 << 16) | (0x140 << 20));
        put32(&mut c, 0x140, 0x0042 | (1 << 16) | (0x100 << 20));
        let text = decode_config(&c, &engine_sizing());
        assert!(
            text.contains("\tCapabilities: [100 v2] Advanced Error Reporting\n\tCapabilities: [140 v1] Extended Capability ID 0x0042\n\tCapabilities: [100] <chain looped>\n"),
            "{text}"
        );
        // A next pointer below 0x100.
        put32(&mut c, 0x140, 0x0042 | (1 << 16) | (0x40 << 20));
        let text = decode_config(&c, &engine_sizing());
        assert!(
            text.contains("\tCapabilities: [040] <pointer below 0x100>\n"),
            "{text}"
        );
        // Past the end of a 0x104-byte config space.
        c.truncate(0x104);
        put32(&mut c, 0x100, 0x0003 | (1 << 16) | (0xffc << 20));
        let text = decode_config(&c, &engine_sizing());
        assert!(
            text.contains("\tCapabilities: [ffc] <pointer out of range>\n"),
            "{text}"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(size_text(4096), "4K");
        assert_eq!(size_text(32), "32");
        assert_eq!(size_text(16 << 20), "16M");
        assert_eq!(size_text(3 << 10), "3K");
        assert_eq!(size_text(1536), "1536");
        assert_eq!(size_text(1 << 63), "8E");
    }

    /// Config space with BARs that decode like hardware: writes are masked by each BAR's size.
    struct FakeConfig {
        bytes: Vec<u8>,
        masks: [u32; 6],
        rom_mask: u32,
        writes: Vec<(u64, Vec<u8>)>,
        fail_reads: bool,
    }

    impl ConfigAccess for FakeConfig {
        fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<(), String> {
            if self.fail_reads {
                return Err("read refused".into());
            }
            let at = offset as usize;
            buf.copy_from_slice(&self.bytes[at..at + buf.len()]);
            Ok(())
        }

        fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), String> {
            self.writes.push((offset, data.to_vec()));
            let at = offset as usize;
            if data.len() == 4 && (0x10..0x28).contains(&at) {
                let i = (at - 0x10) / 4;
                let v = u32::from_le_bytes(data.try_into().unwrap());
                let old = dword(&self.bytes, at).unwrap();
                let ro = !self.masks[i];
                put32(&mut self.bytes, at, (v & self.masks[i]) | (old & ro));
            } else if data.len() == 4 && at == ROM_OFFSET {
                let v = u32::from_le_bytes(data.try_into().unwrap());
                put32(&mut self.bytes, at, v & (self.rom_mask | 1));
            } else {
                self.bytes[at..at + data.len()].copy_from_slice(data);
            }
            Ok(())
        }
    }

    #[test]
    fn sizing_restores_every_register() {
        let mut c = engine_config();
        put16(&mut c, 0x04, COMMAND_MEMORY | 4);
        put32(&mut c, 0x10, 0xfebf_1000);
        put32(&mut c, 0x14, 0x0000_000c);
        put32(&mut c, 0x18, 0x2);
        put32(&mut c, 0x30, 0xfeb0_0000);
        let mut fake = FakeConfig {
            bytes: c.clone(),
            masks: [0xffff_f000, 0xff00_0000, 0xffff_ffff, 0, 0, 0],
            rom_mask: 0xffff_0000,
            writes: Vec::new(),
            fail_reads: false,
        };
        let (sizing, notes) = size_bars(&mut fake, &c);
        assert!(notes.is_empty(), "{notes:?}");
        assert_eq!(fake.bytes, c, "every register is back as it was");
        assert_eq!(
            sizing.bars,
            [
                Some(0xffff_f000),
                Some(0xff00_000c),
                Some(0xffff_ffff),
                Some(0),
                Some(0),
                Some(0)
            ]
        );
        assert_eq!(sizing.rom, Some(0xffff_0000));
        // Decoding was off while sizing, and back on at the end.
        assert_eq!(
            fake.writes.first().unwrap(),
            &(0x04, 4u16.to_le_bytes().to_vec())
        );
        assert_eq!(
            fake.writes.last().unwrap(),
            &(0x04, (COMMAND_MEMORY | 4).to_le_bytes().to_vec())
        );
        let text = decode_config(&c, &sizing);
        assert!(
            text.contains("Region 1: Memory at 200000000 (64-bit, prefetchable) [size=16M]"),
            "{text}"
        );
        assert!(
            text.contains("Expansion ROM at feb00000 [disabled] [size=64K]"),
            "{text}"
        );
    }

    #[test]
    fn sizing_restores_even_when_reads_fail() {
        let c = {
            let mut c = engine_config();
            put32(&mut c, 0x10, 0xfebf_1000);
            c
        };
        let mut fake = FakeConfig {
            bytes: c.clone(),
            masks: [0xffff_f000, 0, 0, 0, 0, 0],
            rom_mask: 0,
            writes: Vec::new(),
            fail_reads: true,
        };
        let (sizing, notes) = size_bars(&mut fake, &c);
        assert_eq!(sizing, BarSizing::default());
        assert_eq!(notes.len(), 7, "{notes:?}");
        assert_eq!(fake.bytes, c);
    }

    #[test]
    fn render_lists_regions_and_irqs() {
        let report = Report {
            version: (0, 0),
            capabilities: Some(Capabilities {
                max_msg_fds: Some(16),
                pgsizes: Some(4096),
                ..Capabilities::default()
            }),
            device_flags: DEVICE_FLAGS_PCI | DEVICE_FLAGS_RESET,
            num_regions: 9,
            num_irqs: 5,
            regions: vec![
                (
                    0,
                    Ok(RegionInfoReply {
                        size: 4096,
                        flags: REGION_INFO_FLAG_READ | REGION_INFO_FLAG_WRITE,
                        ..RegionInfoReply::default()
                    }),
                ),
                (1, Ok(RegionInfoReply::default())),
                (2, Err("boom".into())),
                (
                    7,
                    Ok(RegionInfoReply {
                        size: 256,
                        flags: REGION_INFO_FLAG_READ
                            | REGION_INFO_FLAG_WRITE
                            | REGION_INFO_FLAG_MMAP,
                        caps: vec![RegionCap::SparseMmap(vec![
                            vdma_user::protocol::SparseMmapArea::new(0, 128),
                        ])],
                        ..RegionInfoReply::default()
                    }),
                ),
            ],
            irqs: vec![
                (
                    2,
                    Ok(IrqReport {
                        count: 1,
                        flags: IRQ_INFO_EVENTFD | IRQ_INFO_NORESIZE,
                    }),
                ),
                (3, Ok(IrqReport { count: 0, flags: 0 })),
            ],
            config: Some(Ok(engine_config())),
            sizing: engine_sizing(),
            ..Report::default()
        };
        let text = render(&report);
        assert!(text.contains("vfio-user version 0.0"), "{text}");
        assert!(
            text.contains("max_msg_fds=16 max_data_xfer_size=- "),
            "{text}"
        );
        assert!(text.contains("pgsizes=0x1000"), "{text}");
        assert!(text.contains("Device: flags 0x3 (RESET PCI), 9 regions, 5 interrupt types"));
        assert!(
            text.contains("  0 BAR0: size 0x1000 [4K], flags 0x3 (READ WRITE)\n"),
            "{text}"
        );
        assert!(text.contains("  1 BAR1: absent\n"), "{text}");
        assert!(text.contains("  2 BAR2: error: boom\n"), "{text}");
        assert!(text.contains("  7 config: size 0x100 [256], flags 0x7 (READ WRITE MMAP)\n      mmap: file offset 0x0, areas: 0x0+0x80\n"), "{text}");
        assert!(
            text.contains("  2 MSI-X: count 1, flags 0x9 (EVENTFD NORESIZE)\n"),
            "{text}"
        );
        assert!(text.contains("  3 ERR: none\n"), "{text}");
        assert!(
            text.contains("Config space (256 bytes):\nSystem peripheral [0880]"),
            "{text}"
        );
        assert_eq!(report.errors(), 1);
    }
}
