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
//!
//! # What the client sees
//!
//! - Regions, numbered as vfio numbers them: 0 to 5 the BARs (size from the layout, read and
//!   write; mmap if [`PciFunction::bar_mmap`] gives a file, without the pages of the MSI-X
//!   table and PBA), 6 the expansion ROM (size 0), 7 config space (256 bytes, conventional
//!   PCI), 8 VGA (size 0). DEVICE_GET_INFO: PCI, RESET, 9 regions, 5 interrupt types.
//! - Config space: type 0 header with the identity of [`PciIdentity`], interrupt pin INTA
//!   when [`PciLayout::intx`], BARs that size (write all ones, read back the size mask and
//!   the type bits; 64-bit BARs as register pairs), expansion ROM reading 0. Writable:
//!   command (I/O, memory, bus master, parity, SERR, INTx disable), cache line size, latency
//!   timer, interrupt line, BAR address bits; status error bits are write-1-to-clear; the
//!   status interrupt bit shows the INTx level; everything else is read-only. Any length at
//!   any offset inside the 256 bytes works, byte by byte.
//! - Capabilities from 0x40: MSI (64-bit address, per-vector mask and pending bits; enable
//!   and multiple-message-enable writable), then MSI-X (table and PBA offset and BIR; enable
//!   and function mask writable).
//! - The MSI-X table and PBA are emulated in their BAR. An access lies wholly in the table,
//!   wholly in the PBA or wholly in the function's part: one that straddles a boundary is
//!   EINVAL (never split, so a function never sees part of an access). PBA writes are
//!   dropped. Entries start masked.
//!
//! # Interrupts
//!
//! DEVICE_GET_IRQ_INFO: INTx (1 vector with [`PciLayout::intx`], EVENTFD | MASKABLE |
//! AUTOMASKED), MSI (the layout's vectors, EVENTFD | NORESIZE), MSI-X (the layout's vectors,
//! EVENTFD: vectors get eventfds one at a time while enabled), ERR (1 vector, signalled by
//! [`PciDevice::report_fatal_error`]; vfio-pci offers it on PCIe devices only, but QEMU warns
//! at every start without it), REQ (1 vector, signalled by [`PciDevice::request_release`]).
//! [`Interrupts::raise`] delivers through the enabled type, honouring masks. SET_IRQS follows
//! vfio-pci:
//!
//! - TRIGGER with eventfds, or without descriptors (QEMU's fd -1), enables the type if none
//!   is enabled and sets the vectors' eventfds; EINVAL while another of INTx, MSI, MSI-X is
//!   enabled. Descriptors that are not eventfds: EINVAL.
//! - TRIGGER, count 0, DATA_NONE disables the type if it is the enabled one; for a type that
//!   is not enabled it is a no-op (vfio-pci says EINVAL; tearing down what is down is not an
//!   error here).
//! - TRIGGER with NONE or BOOL signals the vectors' eventfds (loopback); EINVAL if the type is
//!   not enabled.
//! - MASK, UNMASK: INTx only, EINVAL unless INTx is enabled. UNMASK of a line still asserted
//!   signals it again and leaves it masked. Through an eventfd (KVM's resample fd): ENOTSUP,
//!   QEMU then unmasks with SET_IRQS at EOI. MSI, MSI-X, ERR, REQ: ENOTTY, as vfio-pci.
//!
//! QEMU keeps the guest's MSI-X table to itself and never writes the device's, as with the
//! kernel's vfio-pci, where the host kernel owns the physical table. So giving an MSI-X
//! vector an eventfd unmasks its entry here and taking the eventfd away masks it, as the host
//! kernel's request_irq and free_irq would; a client that does write the table masks and
//! unmasks entries as well. A vector without an eventfd stays pending.
//!
//! DEVICE_RESET: [`PciFunction::reset`] runs, then config space and the MSI-X table go back
//! to their power-on values (MSI and MSI-X disabled in config space, nothing pending), and
//! INTx is deasserted and unmasked. The function goes first so that an interrupt it raises
//! while it quiesces (a command that completes during the reset) is wiped too. The SET_IRQS
//! setup (enabled type and eventfds) stays, as it does across VFIO_DEVICE_RESET (QEMU
//! disables interrupts itself before resetting). On disconnect every eventfd is dropped, then
//! [`PciFunction::disconnect`] runs instead of the function's reset, then the same reset is
//! done, so the next client finds a powered-on device.

mod bar_mmap;
mod config_space;
mod device;
mod eventfd;
mod function;
mod interrupts;
mod layout;
mod msix;
mod set_irqs;
mod state;

pub use device::{PciDevice, CONFIG_REGION, NUM_IRQS, NUM_REGIONS, ROM_REGION, VGA_REGION};
pub use function::PciFunction;
pub use interrupts::{InterruptMode, Interrupts};
pub use layout::{BarKind, MsixLayout, PciBar, PciIdentity, PciLayout};
