//! [`PciLayout`]: what a PCI function is (ids, class, BARs, interrupts), described once.

/// The identity registers of config space.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIdentity {
    /// Vendor id (offset 0x00).
    pub vendor_id: u16,
    /// Device id (offset 0x02).
    pub device_id: u16,
    /// Revision id (offset 0x08).
    pub revision: u8,
    /// Class code: base class, sub-class, programming interface (offsets 0x0b, 0x0a, 0x09),
    /// as one 24-bit number, e.g. 0x088000.
    pub class_code: u32,
    /// Subsystem vendor id (offset 0x2c).
    pub subsystem_vendor_id: u16,
    /// Subsystem id (offset 0x2e).
    pub subsystem_id: u16,
}

/// What kind of address space a BAR decodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory.
    Memory32 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// 64-bit memory: takes this BAR and the next one.
    Memory64 {
        /// Prefetchable.
        prefetchable: bool,
    },
    /// I/O ports.
    Io,
}

/// One base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciBar {
    /// Size in bytes: a power of two, at least 16 for memory and 4 for I/O.
    pub size: u64,
    /// Address space.
    pub kind: BarKind,
}

/// Where the MSI-X table and pending-bit array live.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Number of vectors (1 to 2048).
    pub vectors: u16,
    /// The BAR holding the table and the PBA (its reads and writes there are the table's,
    /// not the function's).
    pub bar: u8,
    /// Offset of the table in the BAR (8-byte aligned; 16 bytes per vector).
    pub table_offset: u32,
    /// Offset of the PBA in the BAR (8-byte aligned; one bit per vector, in u64 words).
    pub pba_offset: u32,
}

/// A whole PCI function, as [`crate::pci::PciDevice`] presents it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PciLayout {
    /// Ids and class.
    pub identity: PciIdentity,
    /// BARs 0 to 5 (`None`: absent; the slot after a 64-bit BAR must be `None`).
    pub bars: [Option<PciBar>; 6],
    /// Interrupt pin INTA (`true`) or none.
    pub intx: bool,
    /// An MSI capability with this many vectors (1, 2, 4, 8, 16 or 32), or none.
    pub msi_vectors: Option<u8>,
    /// An MSI-X capability, or none.
    pub msix: Option<MsixLayout>,
}
