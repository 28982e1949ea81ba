//! [`Interrupts`]: how a PCI function raises its interrupts, whichever kind the VMM set up.

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
#[derive(Clone, Debug)]
pub struct Interrupts {
    // filled in by the implementation
}

impl Interrupts {
    /// Raises `vector`: MSI-X if the VMM gave MSI-X eventfds, else MSI, else INTx (vector 0
    /// only; asserts the level). A masked vector becomes pending and is delivered on unmask.
    /// Returns the mode used.
    pub fn raise(&self, vector: u32) -> InterruptMode {
        let _ = vector;
        unimplemented!()
    }

    /// Deasserts INTx (e.g. when the guest clears the device's interrupt status).
    pub fn deassert_intx(&self) {
        unimplemented!()
    }

    /// The mode [`Interrupts::raise`] would use now.
    pub fn mode(&self) -> InterruptMode {
        unimplemented!()
    }
}
