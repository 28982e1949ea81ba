//! [`PciDevice`]: a [`PciFunction`] served as a vfio-user PCI device.

use super::{Interrupts, PciFunction, PciLayout};

/// A PCI function with its config space and interrupts: implements
/// [`crate::server::Device`].
pub struct PciDevice<F> {
    function: F,
    // filled in by the implementation
}

impl<F: PciFunction> PciDevice<F> {
    /// Builds the device: `make` gets the function's [`Interrupts`] handle. Fails with
    /// `DeviceError::Invalid` when the layout is inconsistent (BAR sizes, a 64-bit BAR in slot
    /// 5, MSI-X table outside its BAR, ...).
    pub fn new(
        layout: PciLayout,
        make: impl FnOnce(Interrupts) -> F,
    ) -> Result<PciDevice<F>, crate::server::DeviceError> {
        let _ = (layout, make);
        unimplemented!()
    }

    /// The function.
    pub fn function(&self) -> &F {
        &self.function
    }
}
