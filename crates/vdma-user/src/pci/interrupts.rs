//! [`Interrupts`]: how a PCI function raises its interrupts, whichever kind the VMM set up.

use std::sync::Arc;

use super::state::Shared;

/// Which interrupt kind [`Interrupts::raise`] delivers through.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InterruptMode {
    /// No kind has an eventfd: the interrupt is recorded (status, pending bits) only.
    None,
    /// INTx (level: asserted until [`Interrupts::deassert_intx`]).
    Intx,
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
}

/// A cloneable handle on a function's interrupts (eventfds from SET_IRQS, masks, the INTx
/// level, the MSI-X table and PBA).
///
/// Any thread may use it. Eventfds are signalled after the device's state lock is released,
/// so a function may raise from inside its own `bar_write`.
#[derive(Clone)]
pub struct Interrupts {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Interrupts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Interrupts")
            .field("mode", &self.mode())
            .finish_non_exhaustive()
    }
}

impl Interrupts {
    /// The handle on `shared`.
    pub(crate) fn new(shared: Arc<Shared>) -> Interrupts {
        Interrupts { shared }
    }

    /// Raises `vector` in the type the VMM enabled with SET_IRQS (at most one of MSI-X, MSI,
    /// INTx is):
    ///
    /// - MSI-X: the vector's PBA bit is set; it is delivered (and cleared) at once if the
    ///   entry is unmasked, the function mask clear and the vector has an eventfd, else when
    ///   that becomes true.
    /// - MSI: likewise with the capability's pending and mask bits.
    /// - INTx: the one line is asserted, whatever the vector, until
    ///   [`Interrupts::deassert_intx`]; it is signalled once and masks itself (vfio's
    ///   automasking); an UNMASK while it is still asserted signals it again. The command
    ///   register's INTx disable holds it back.
    /// - None enabled: the interrupt is recorded only (in MSI-X if config space enables it,
    ///   else MSI if enabled, else the INTx level, shown in the status register).
    ///
    /// A vector past the type's count is ignored. Returns the mode used.
    pub fn raise(&self, vector: u32) -> InterruptMode {
        self.shared.with(|state, out| state.raise(vector, out))
    }

    /// Deasserts INTx (e.g. when the guest clears the device's interrupt status).
    pub fn deassert_intx(&self) {
        self.shared.lock().deassert_intx();
    }

    /// The mode [`Interrupts::raise`] would use now: the type enabled with SET_IRQS.
    pub fn mode(&self) -> InterruptMode {
        self.shared.lock().mode()
    }
}
