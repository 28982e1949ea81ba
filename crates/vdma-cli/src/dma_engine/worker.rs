//! The engine: the register file behind one lock, and the worker thread that runs commands.
//!
//! A CMD write latches the registers into a [`Job`], sets STATUS to BUSY and wakes the worker;
//! the write returns at once. The worker runs the job with no lock held, then, in one step,
//! sets STATUS (DONE or ERROR), ERRNO, RESULT, IRQ_STATUS bit 0 and COUNT, and raises the
//! interrupt if IRQ_ENABLE bit 0 is set.
//!
//! Locks: `irq_order` is taken first by everything that changes IRQ_STATUS and then calls into
//! [`Interrupts`] (a completion raising, a W1C deasserting), so that the INTx level always
//! follows IRQ_STATUS; `state` second, and never held while calling into [`Interrupts`] or
//! doing DMA.
//!
//! Reset: a command already moving bytes cannot be stopped halfway, so [`Engine::reset`] drops
//! a command not yet started, waits for the running one to end, and discards its completion
//! (no register change, no interrupt); then every register takes its initial value. When it
//! returns, the device does no DMA and raises nothing until the next CMD.
//!
//! Disconnect: [`Engine::disconnect`] takes the DMA handle away, then resets as above (the
//! running command ends, its completion is discarded), and drops the handle once the worker
//! has let go of it: when it returns, no DMA of the engine is in flight and the next client
//! finds the registers at their initial values, as the PCI layer leaves config space.

use std::io;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::thread::{self, JoinHandle};

use vdma::DeviceHandle;
use vdma_user::pci::Interrupts;

use super::command::{CommandError, Job};
use super::registers::{Registers, IRQ_DONE, STATUS_DONE, STATUS_ERROR};

/// What the handler thread and the worker share.
#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// The worker waits here for a job or shutdown.
    work: Condvar,
    /// Reset and disconnect wait here for the worker to be idle.
    idle: Condvar,
    /// Orders IRQ_STATUS changes with the calls into `interrupts` (see the module docs).
    irq_order: Mutex<()>,
    interrupts: OnceLock<Interrupts>,
}

#[derive(Debug, Default)]
struct State {
    regs: Registers,
    /// A command accepted and not yet taken by the worker.
    queued: Option<Job>,
    /// The worker is running a command.
    running: bool,
    /// Bumped by reset: a command started in an older epoch completes silently.
    epoch: u64,
    dma: Option<Arc<DeviceHandle>>,
    shutdown: bool,
}

impl State {
    fn idle(&self) -> bool {
        !self.running && self.queued.is_none()
    }
}

/// Locks `m`, even if a thread panicked while holding it (the state stays consistent: every
/// update is a few plain stores).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The registers and the worker thread. Dropping it stops the worker (after the command it
/// runs, if any).
#[derive(Debug)]
pub(crate) struct Engine {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Engine {
    /// An engine in its reset state, with its worker thread started.
    pub(crate) fn start() -> io::Result<Engine> {
        let shared = Arc::new(Shared::default());
        let thread = thread::Builder::new().name("dma-engine".into()).spawn({
            let shared = Arc::clone(&shared);
            move || worker(&shared)
        })?;
        Ok(Engine {
            shared,
            thread: Some(thread),
        })
    }

    /// Gives the engine the interrupts it raises (once; later calls are ignored). Until then
    /// completions only set IRQ_STATUS.
    pub(crate) fn set_interrupts(&self, interrupts: Interrupts) {
        let _ = self.shared.interrupts.set(interrupts);
    }

    /// A BAR0 read (see [`super::registers`]).
    pub(crate) fn read(&self, offset: u64, buf: &mut [u8]) {
        lock(&self.shared.state).regs.read(offset, buf);
    }

    /// A BAR0 write (see [`super::registers`]); a CMD write queues the command and returns.
    pub(crate) fn write(&self, offset: u64, data: &[u8]) {
        let shared = &*self.shared;
        let _order = lock(&shared.irq_order);
        let effects = {
            let mut state = lock(&shared.state);
            let mut effects = state.regs.write(offset, data);
            if let Some(job) = effects.start.take() {
                state.queued = Some(job);
                shared.work.notify_one();
            }
            effects
        };
        if effects.clear_irq {
            if let Some(interrupts) = shared.interrupts.get() {
                interrupts.deassert_intx();
            }
        }
    }

    /// Reset: see the module documentation.
    pub(crate) fn reset(&self) {
        let state = lock(&self.shared.state);
        drop(self.reset_locked(state));
    }

    fn reset_locked<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        state.epoch = state.epoch.wrapping_add(1);
        state.queued = None;
        state = self.wait_idle_locked(state);
        state.regs = Registers::default();
        state
    }

    /// A client connected: its DMA handle.
    pub(crate) fn connect(&self, dma: DeviceHandle) {
        lock(&self.shared.state).dma = Some(Arc::new(dma));
    }

    /// The client is gone: see the module documentation.
    pub(crate) fn disconnect(&self) {
        let mut state = lock(&self.shared.state);
        let dma = state.dma.take();
        let state = self.reset_locked(state);
        drop(state);
        // The worker dropped its clone before it went idle: this is the last one.
        drop(dma);
    }

    /// Waits until no command is queued or running.
    pub(crate) fn wait_idle(&self) {
        let state = lock(&self.shared.state);
        drop(self.wait_idle_locked(state));
    }

    /// How many resets began (for tests that need to know a reset is under way).
    #[cfg(test)]
    pub(crate) fn epoch(&self) -> u64 {
        lock(&self.shared.state).epoch
    }

    fn wait_idle_locked<'a>(&'a self, mut state: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        while !state.idle() {
            state = self
                .shared
                .idle
                .wait(state)
                .unwrap_or_else(|e| e.into_inner());
        }
        state
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        lock(&self.shared.state).shutdown = true;
        self.shared.work.notify_all();
        if let Some(thread) = self.thread.take() {
            // The worker does not panic; if it did, there is nothing left to clean up.
            let _ = thread.join();
        }
    }
}

/// The worker thread: one command at a time until shutdown.
fn worker(shared: &Shared) {
    loop {
        let (job, epoch, dma) = {
            let mut state = lock(&shared.state);
            loop {
                if state.shutdown {
                    return;
                }
                if let Some(job) = state.queued.take() {
                    state.running = true;
                    break (job, state.epoch, state.dma.clone());
                }
                state = shared.work.wait(state).unwrap_or_else(|e| e.into_inner());
            }
        };
        let outcome = job.run(dma.as_deref());
        if let Err(e) = &outcome {
            tracing::debug!(?job, error = %e, "dma-engine: command failed");
        }
        // The handle goes before the engine reads as idle: disconnect relies on it.
        drop(dma);
        complete(shared, epoch, outcome);
    }
}

/// Publishes a command's outcome (unless a reset came in between), raises the interrupt, and
/// marks the worker idle.
fn complete(shared: &Shared, epoch: u64, outcome: Result<Option<u32>, CommandError>) {
    let _order = lock(&shared.irq_order);
    let raise = {
        let mut state = lock(&shared.state);
        let current = state.epoch == epoch;
        if current {
            let regs = &mut state.regs;
            match outcome {
                Ok(result) => {
                    regs.status = STATUS_DONE;
                    regs.errno = 0;
                    if let Some(result) = result {
                        regs.result = result;
                    }
                }
                Err(e) => {
                    regs.status = STATUS_ERROR;
                    regs.errno = e.errno().unsigned_abs();
                }
            }
            regs.irq_status |= IRQ_DONE;
            regs.count = regs.count.wrapping_add(1);
        }
        current && state.regs.irq_enable & IRQ_DONE != 0
    };
    if raise {
        if let Some(interrupts) = shared.interrupts.get() {
            interrupts.raise(0);
        }
    }
    lock(&shared.state).running = false;
    shared.idle.notify_all();
}
