//! PCI for device authors: config space, BARs, MSI, MSI-X and INTx, so a device served over
//! vfio-user is written as its registers and nothing else.
//!
//! A device author describes the function once ([`PciLayout`]: ids, class, BARs, which
//! interrupts) and implements [`PciFunction`] (BAR reads and writes, reset, what to do with the
//! DMA handle). [`PciDevice`] turns that into a [`crate::server::Device`]: the nine vfio PCI
//! regions (six BARs, ROM, config space, VGA), the five interrupt types (INTx, MSI, MSI-X, ERR,
//! REQ), config space with BAR sizing and the capability list, the MSI-X table and PBA, and
//! [`Interrupts`], the handle the function raises its interrupts with (MSI-X, MSI or INTx,
//! whichever the VMM set up with SET_IRQS).

mod config_space;
mod device;
mod function;
mod interrupts;
mod layout;

pub use device::PciDevice;
pub use function::PciFunction;
pub use interrupts::{InterruptMode, Interrupts};
pub use layout::{BarKind, MsixLayout, PciBar, PciIdentity, PciLayout};
