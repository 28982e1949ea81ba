//! DEVICE_SET_IRQS on a PCI function, with vfio-pci's rules (drivers/vfio/pci/vfio_pci_intrs.c).
//!
//! - TRIGGER with eventfds (or with none, QEMU's "fd -1": [`IrqSetData::ClearEventFds`])
//!   enables the type if no type is enabled and sets the vectors' eventfds; EINVAL while
//!   another of INTx, MSI, MSI-X is enabled.
//! - TRIGGER with count 0 and no data disables the type if it is the enabled one (a no-op
//!   otherwise, where vfio-pci says EINVAL: a client tearing down what is already down is
//!   not an error here).
//! - TRIGGER with NONE or BOOL signals the vectors' eventfds directly (loopback), EINVAL if
//!   the type is not enabled.
//! - MASK and UNMASK: INTx only (EINVAL unless INTx is enabled); UNMASK re-signals when the
//!   line is still asserted and leaves it masked. Masking and unmasking through an eventfd is
//!   not supported (ENOTSUP; QEMU then unmasks with SET_IRQS on EOI). MSI, MSI-X, ERR and
//!   REQ: ENOTTY, as vfio-pci.
//! - ERR and REQ have one vector each, TRIGGER only; their eventfds are signalled by
//!   [`crate::pci::PciDevice::report_fatal_error`] and
//!   [`crate::pci::PciDevice::request_release`].

use std::sync::Arc;

use super::eventfd::EventFd;
use super::state::{Kind, Signals, State};
use crate::protocol::{
    PCI_ERR_IRQ_INDEX, PCI_INTX_IRQ_INDEX, PCI_MSIX_IRQ_INDEX, PCI_MSI_IRQ_INDEX, PCI_REQ_IRQ_INDEX,
};
use crate::server::{DeviceError, IrqAction, IrqRequest, IrqSetData};

/// vfio-pci's answer to an action the type does not have.
fn no_such_action() -> DeviceError {
    DeviceError::Errno {
        errno: libc::ENOTTY,
        reason: "SET_IRQS: the interrupt type has no such action",
    }
}

impl State {
    /// Carries out one SET_IRQS request; eventfds to signal go to `out`.
    pub(crate) fn set_irqs(
        &mut self,
        request: IrqRequest<'_>,
        out: &mut Signals,
    ) -> Result<(), DeviceError> {
        let IrqRequest {
            index,
            start,
            count,
            action,
            data,
        } = request;
        let kind = match index {
            PCI_INTX_IRQ_INDEX => Kind::Intx,
            PCI_MSI_IRQ_INDEX => Kind::Msi,
            PCI_MSIX_IRQ_INDEX => Kind::Msix,
            PCI_ERR_IRQ_INDEX => {
                let slot = &mut self.err;
                return single(slot, start, count, action, data, out);
            }
            PCI_REQ_IRQ_INDEX => {
                let slot = &mut self.req;
                return single(slot, start, count, action, data, out);
            }
            _ => return Err(DeviceError::Invalid("SET_IRQS: no such interrupt type")),
        };
        let end = start
            .checked_add(count)
            .filter(|&end| end <= self.vectors(kind))
            .ok_or(DeviceError::Invalid(
                "SET_IRQS: vectors past the type's count",
            ))?;
        match (kind, action) {
            (_, IrqAction::Trigger) => self.trigger(kind, start, end, data, out),
            (Kind::Intx, IrqAction::Mask) => self.intx_mask(count, data),
            (Kind::Intx, IrqAction::Unmask) => self.intx_unmask(count, data, out),
            _ => Err(no_such_action()),
        }
    }

    /// TRIGGER on INTx, MSI or MSI-X, vectors `[start, end)`.
    fn trigger(
        &mut self,
        kind: Kind,
        start: u32,
        end: u32,
        data: IrqSetData<'_>,
        out: &mut Signals,
    ) -> Result<(), DeviceError> {
        if start == end {
            if !matches!(data, IrqSetData::None) {
                return Err(DeviceError::Invalid("SET_IRQS: count 0 needs DATA_NONE"));
            }
            if self.kind == Some(kind) {
                self.disable();
            }
            return Ok(());
        }
        if self.kind.is_some_and(|k| k != kind) {
            return Err(DeviceError::Invalid(
                "SET_IRQS: another interrupt type is enabled",
            ));
        }
        match data {
            IrqSetData::EventFds(fds) => {
                if fds.len() != (end - start) as usize {
                    return Err(DeviceError::Invalid("SET_IRQS: not one eventfd per vector"));
                }
                // Every descriptor is checked before anything changes.
                let fds = fds
                    .into_iter()
                    .map(|fd| EventFd::new(fd).map(Arc::new))
                    .collect::<Result<Vec<_>, _>>()?;
                self.enable(kind);
                for (v, fd) in (start..end).zip(fds) {
                    self.set_trigger(v, Some(fd));
                }
                self.sync(out);
            }
            IrqSetData::ClearEventFds => {
                self.enable(kind);
                for v in start..end {
                    self.set_trigger(v, None);
                }
            }
            IrqSetData::None => self.loopback(kind, start, end, |_| true, out)?,
            IrqSetData::Bool(flags) => {
                if flags.len() != (end - start) as usize {
                    return Err(DeviceError::Invalid("SET_IRQS: not one bool per vector"));
                }
                self.loopback(kind, start, end, |i| flags[i] != 0, out)?;
            }
        }
        Ok(())
    }

    /// TRIGGER with NONE or BOOL: signal the eventfds of `[start, end)` where `pick` says so.
    fn loopback(
        &mut self,
        kind: Kind,
        start: u32,
        end: u32,
        pick: impl Fn(usize) -> bool,
        out: &mut Signals,
    ) -> Result<(), DeviceError> {
        if self.kind != Some(kind) {
            return Err(DeviceError::Invalid(
                "SET_IRQS: the interrupt type is not enabled",
            ));
        }
        for (i, v) in (start..end).enumerate() {
            if let Some(Some(fd)) = self.triggers.get(v as usize) {
                if pick(i) {
                    out.push(fd.clone());
                }
            }
        }
        Ok(())
    }

    /// Whether a MASK or UNMASK of INTx acts: EINVAL unless INTx is enabled and the request
    /// names its one vector; eventfds are not supported.
    fn intx_acts(&self, count: u32, data: &IrqSetData<'_>) -> Result<bool, DeviceError> {
        if self.kind != Some(Kind::Intx) || count != 1 {
            return Err(DeviceError::Invalid(
                "SET_IRQS: INTx is not enabled, or not vector 0 alone",
            ));
        }
        match data {
            IrqSetData::None => Ok(true),
            IrqSetData::Bool(flags) => Ok(flags.first().is_some_and(|&b| b != 0)),
            IrqSetData::EventFds(_) | IrqSetData::ClearEventFds => Err(DeviceError::NotSupported(
                "INTx mask or unmask through an eventfd",
            )),
        }
    }

    /// MASK of INTx.
    fn intx_mask(&mut self, count: u32, data: IrqSetData<'_>) -> Result<(), DeviceError> {
        if self.intx_acts(count, &data)? {
            self.intx_masked = true;
        }
        Ok(())
    }

    /// UNMASK of INTx: still asserted (and not disabled in the command register), it is
    /// signalled again and stays masked; otherwise it is unmasked.
    fn intx_unmask(
        &mut self,
        count: u32,
        data: IrqSetData<'_>,
        out: &mut Signals,
    ) -> Result<(), DeviceError> {
        if !self.intx_acts(count, &data)? || !self.intx_masked || self.config.intx_disabled() {
            return Ok(());
        }
        if self.intx_level {
            if let Some(Some(fd)) = self.triggers.first() {
                out.push(fd.clone());
            }
        } else {
            self.intx_masked = false;
        }
        Ok(())
    }
}

/// SET_IRQS on ERR or REQ (one vector, TRIGGER only), whose eventfd is `slot`.
fn single(
    slot: &mut Option<Arc<EventFd>>,
    start: u32,
    count: u32,
    action: IrqAction,
    data: IrqSetData<'_>,
    out: &mut Signals,
) -> Result<(), DeviceError> {
    if action != IrqAction::Trigger {
        return Err(no_such_action());
    }
    if start != 0 || count > 1 {
        return Err(DeviceError::Invalid(
            "SET_IRQS: ERR and REQ have one vector",
        ));
    }
    match data {
        IrqSetData::None if count == 0 => *slot = None,
        IrqSetData::None => out.extend(slot.clone()),
        IrqSetData::Bool(flags) => {
            if flags.first().is_some_and(|&b| b != 0) {
                out.extend(slot.clone());
            }
        }
        IrqSetData::EventFds(mut fds) => {
            let fd = fds
                .pop()
                .filter(|_| fds.is_empty())
                .ok_or(DeviceError::Invalid("SET_IRQS: not one eventfd per vector"))?;
            *slot = Some(Arc::new(EventFd::new(fd)?));
        }
        IrqSetData::ClearEventFds => *slot = None,
    }
    Ok(())
}
