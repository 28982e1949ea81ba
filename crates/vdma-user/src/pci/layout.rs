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

/// Bytes per MSI-X table entry (address, data, vector control).
pub(crate) const MSIX_ENTRY_SIZE: u64 = 16;

impl MsixLayout {
    /// Bytes of the vector table.
    pub(crate) fn table_size(&self) -> u64 {
        u64::from(self.vectors) * MSIX_ENTRY_SIZE
    }

    /// Bytes of the pending-bit array (whole u64 words).
    pub(crate) fn pba_size(&self) -> u64 {
        u64::from(self.vectors).div_ceil(64) * 8
    }

    /// `[start, end)` of the table in its BAR.
    pub(crate) fn table_range(&self) -> (u64, u64) {
        let start = u64::from(self.table_offset);
        (start, start + self.table_size())
    }

    /// `[start, end)` of the PBA in its BAR.
    pub(crate) fn pba_range(&self) -> (u64, u64) {
        let start = u64::from(self.pba_offset);
        (start, start + self.pba_size())
    }
}

impl PciLayout {
    /// Checks the layout (see [`crate::pci::PciDevice::new`]); the reason on failure.
    pub(crate) fn validate(&self) -> Result<(), &'static str> {
        let mut upper_half = false;
        for (slot, bar) in self.bars.iter().enumerate() {
            if upper_half {
                upper_half = false;
                if bar.is_some() {
                    return Err("the slot after a 64-bit BAR must be None");
                }
                continue;
            }
            let Some(bar) = bar else { continue };
            if !bar.size.is_power_of_two() {
                return Err("a BAR size is not a power of two");
            }
            match bar.kind {
                BarKind::Memory32 { .. } => {
                    if bar.size < 16 || bar.size > 1 << 31 {
                        return Err("a 32-bit memory BAR is not 16 bytes to 2 GiB");
                    }
                }
                BarKind::Memory64 { .. } => {
                    if slot == 5 {
                        return Err("a 64-bit BAR in slot 5 has no upper half");
                    }
                    if bar.size < 16 || bar.size > 1 << 63 {
                        return Err("a 64-bit memory BAR is not 16 bytes to 2^63");
                    }
                    upper_half = true;
                }
                BarKind::Io => {
                    if !(4..=256).contains(&bar.size) {
                        return Err("an I/O BAR is not 4 to 256 bytes");
                    }
                }
            }
        }
        if let Some(n) = self.msi_vectors {
            if !matches!(n, 1 | 2 | 4 | 8 | 16 | 32) {
                return Err("MSI vectors are not 1, 2, 4, 8, 16 or 32");
            }
        }
        if let Some(msix) = &self.msix {
            self.validate_msix(msix)?;
        }
        Ok(())
    }

    fn validate_msix(&self, msix: &MsixLayout) -> Result<(), &'static str> {
        if !(1..=2048).contains(&msix.vectors) {
            return Err("MSI-X vectors are not 1 to 2048");
        }
        let bar = self
            .bars
            .get(usize::from(msix.bar))
            .copied()
            .flatten()
            .ok_or("the MSI-X BAR is absent")?;
        if bar.kind == BarKind::Io {
            return Err("the MSI-X table is in an I/O BAR");
        }
        if msix.table_offset % 8 != 0 || msix.pba_offset % 8 != 0 {
            return Err("the MSI-X table or PBA is not 8-byte aligned");
        }
        let (t0, t1) = msix.table_range();
        let (p0, p1) = msix.pba_range();
        if t1 > bar.size || p1 > bar.size {
            return Err("the MSI-X table or PBA passes the end of its BAR");
        }
        if t0 < p1 && p0 < t1 {
            return Err("the MSI-X table and PBA overlap");
        }
        Ok(())
    }
}
