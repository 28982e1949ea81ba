//! [`State`]: one function's config space, MSI-X table and interrupt state behind one lock,
//! and the rule that decides when an interrupt reaches its eventfd.
//!
//! A raised interrupt is first recorded (MSI-X PBA bit, MSI pending bit, INTx level), then
//! [`State::sync`] delivers whatever is recorded and may go: after every raise, config-space
//! write, table write and SET_IRQS. So "deliver when unmasked" is one rule, not one per path.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::config_space::{reg, ConfigSpace, STATUS_INTERRUPT};
use super::eventfd::EventFd;
use super::msix::MsixTable;
use super::{InterruptMode, PciLayout};

/// Eventfds to signal once the lock is released.
pub(crate) type Signals = Vec<Arc<EventFd>>;

/// The interrupt type SET_IRQS enabled (at most one at a time).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    /// INTx.
    Intx,
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
}

/// What the lock protects.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) config: ConfigSpace,
    pub(crate) msix: Option<MsixTable>,
    /// The type SET_IRQS enabled.
    pub(crate) kind: Option<Kind>,
    /// The enabled type's eventfds, one slot per vector of the type.
    pub(crate) triggers: Vec<Option<Arc<EventFd>>>,
    /// The device asserts INTx.
    pub(crate) intx_level: bool,
    /// vfio's INTx mask (set on delivery, cleared by UNMASK when the line is low).
    pub(crate) intx_masked: bool,
    /// The device-request eventfd.
    pub(crate) req: Option<Arc<EventFd>>,
    /// The error eventfd.
    pub(crate) err: Option<Arc<EventFd>>,
    pub(crate) has_intx: bool,
    pub(crate) msi_vectors: u32,
}

impl State {
    /// Power-on state of a (validated) layout.
    pub(crate) fn new(layout: &PciLayout) -> State {
        State {
            config: ConfigSpace::new(layout),
            msix: layout.msix.map(|m| MsixTable::new(m.vectors)),
            kind: None,
            triggers: Vec::new(),
            intx_level: false,
            intx_masked: false,
            req: None,
            err: None,
            has_intx: layout.intx,
            msi_vectors: layout.msi_vectors.map_or(0, u32::from),
        }
    }

    /// Number of vectors of `kind`.
    pub(crate) fn vectors(&self, kind: Kind) -> u32 {
        match kind {
            Kind::Intx => u32::from(self.has_intx),
            Kind::Msi => self.msi_vectors,
            Kind::Msix => self.msix.as_ref().map_or(0, MsixTable::vectors),
        }
    }

    /// The mode [`State::raise`] uses.
    pub(crate) fn mode(&self) -> InterruptMode {
        match self.kind {
            None => InterruptMode::None,
            Some(Kind::Intx) => InterruptMode::Intx,
            Some(Kind::Msi) => InterruptMode::Msi,
            Some(Kind::Msix) => InterruptMode::Msix,
        }
    }

    /// Records `vector` as raised in the enabled type (with none enabled: in the type config
    /// space enables, MSI-X, then MSI, then INTx), then delivers what may go.
    pub(crate) fn raise(&mut self, vector: u32, out: &mut Signals) -> InterruptMode {
        let kind = self.kind.or_else(|| {
            if self.config.msix_enabled() {
                Some(Kind::Msix)
            } else if self.config.msi_enabled() {
                Some(Kind::Msi)
            } else if self.has_intx {
                Some(Kind::Intx)
            } else {
                None
            }
        });
        match kind {
            Some(Kind::Msix) => {
                if let Some(table) = &mut self.msix {
                    table.set_pending(vector, true);
                }
            }
            Some(Kind::Msi) => self.config.set_msi_pending(vector, true),
            Some(Kind::Intx) => self.intx_level = true,
            None => {}
        }
        self.sync(out);
        self.mode()
    }

    /// The device lowers INTx.
    pub(crate) fn deassert_intx(&mut self) {
        self.intx_level = false;
    }

    /// Delivers every recorded interrupt of the enabled type that may go: an MSI-X vector
    /// pending, unmasked in its entry, function not masked, with an eventfd; an MSI vector
    /// pending, unmasked, with an eventfd; INTx asserted, not masked, not disabled in the
    /// command register (delivery masks it, as vfio-pci's handler does).
    pub(crate) fn sync(&mut self, out: &mut Signals) {
        match self.kind {
            None => {}
            Some(Kind::Msix) => {
                if self.config.msix_function_masked() {
                    return;
                }
                let Some(table) = &mut self.msix else { return };
                let ready: Vec<u32> = table
                    .pending_vectors()
                    .filter(|&v| !table.masked(v))
                    .collect();
                for v in ready {
                    if let Some(Some(fd)) = self.triggers.get(v as usize) {
                        table.set_pending(v, false);
                        out.push(fd.clone());
                    }
                }
            }
            Some(Kind::Msi) => {
                for v in 0..self.msi_vectors {
                    if !self.config.msi_pending(v) || self.config.msi_masked(v) {
                        continue;
                    }
                    if let Some(Some(fd)) = self.triggers.get(v as usize) {
                        self.config.set_msi_pending(v, false);
                        out.push(fd.clone());
                    }
                }
            }
            Some(Kind::Intx)
                if self.intx_level && !self.intx_masked && !self.config.intx_disabled() =>
            {
                self.intx_masked = true;
                if let Some(Some(fd)) = self.triggers.first() {
                    out.push(fd.clone());
                }
            }
            Some(Kind::Intx) => {}
        }
    }

    /// Config space as the client reads it: the status register's interrupt bit is the INTx
    /// level.
    pub(crate) fn config_read(&self, offset: usize, buf: &mut [u8]) {
        self.config.read(offset, buf);
        let status = reg::STATUS;
        if (offset..offset + buf.len()).contains(&status) {
            let at = status - offset;
            buf[at] &= !(STATUS_INTERRUPT as u8);
            if self.intx_level {
                buf[at] |= STATUS_INTERRUPT as u8;
            }
        }
    }

    /// A config-space write, then whatever it unmasked.
    pub(crate) fn config_write(&mut self, offset: usize, data: &[u8], out: &mut Signals) {
        self.config.write(offset, data);
        self.sync(out);
    }

    /// A write to the MSI-X table, then whatever it unmasked.
    pub(crate) fn table_write(&mut self, offset: usize, data: &[u8], out: &mut Signals) {
        if let Some(table) = &mut self.msix {
            table.write_table(offset, data);
        }
        self.sync(out);
    }

    /// Sets vector `v`'s eventfd in the enabled type. For MSI-X, an eventfd unmasks the
    /// vector's entry and none masks it, as the host kernel's request_irq and free_irq do
    /// under vfio-pci (QEMU keeps the guest's table to itself and never writes ours).
    pub(crate) fn set_trigger(&mut self, v: u32, fd: Option<Arc<EventFd>>) {
        if self.kind == Some(Kind::Msix) {
            if let Some(table) = &mut self.msix {
                table.set_masked(v, fd.is_none());
            }
        }
        if let Some(slot) = self.triggers.get_mut(v as usize) {
            *slot = fd;
        }
    }

    /// Enables `kind` (no eventfds yet) unless it is already.
    pub(crate) fn enable(&mut self, kind: Kind) {
        if self.kind == Some(kind) {
            return;
        }
        self.kind = Some(kind);
        self.triggers = vec![None; self.vectors(kind) as usize];
        self.intx_masked = false;
    }

    /// Disables the enabled type: its eventfds are dropped, MSI-X entries masked (pending
    /// bits stay).
    pub(crate) fn disable(&mut self) {
        if self.kind == Some(Kind::Msix) {
            for v in 0..self.triggers.len() as u32 {
                self.set_trigger(v, None);
            }
        }
        self.kind = None;
        self.triggers.clear();
        self.intx_masked = false;
    }

    /// DEVICE_RESET: config space and the MSI-X table back to power-on values (entries with
    /// an eventfd stay unmasked, see [`State::set_trigger`]), nothing pending, INTx low and
    /// unmasked. The SET_IRQS setup (type and eventfds) stays, as under vfio-pci.
    pub(crate) fn reset(&mut self) {
        self.config.reset();
        if let Some(table) = &mut self.msix {
            table.reset();
        }
        if self.kind == Some(Kind::Msix) {
            let with_fd: Vec<u32> = (0..self.triggers.len() as u32)
                .filter(|&v| self.triggers[v as usize].is_some())
                .collect();
            if let Some(table) = &mut self.msix {
                for v in with_fd {
                    table.set_masked(v, false);
                }
            }
        }
        self.intx_level = false;
        self.intx_masked = false;
    }
}

/// The state, shared by the device and its [`crate::pci::Interrupts`] handles.
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<State>,
}

impl Shared {
    /// The shared state of a (validated) layout.
    pub(crate) fn new(layout: &PciLayout) -> Shared {
        Shared {
            state: Mutex::new(State::new(layout)),
        }
    }

    /// The state (a panic elsewhere while it was held does not make it unusable: every
    /// update leaves it consistent).
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `f` on the state, then signals the eventfds it collected, outside the lock.
    pub(crate) fn with<R>(&self, f: impl FnOnce(&mut State, &mut Signals) -> R) -> R {
        let mut signals = Signals::new();
        let result = f(&mut self.lock(), &mut signals);
        for fd in signals {
            fd.signal();
        }
        result
    }
}
