//! [`Pending`]: the server's requests to the client (DMA_READ, DMA_WRITE) that await a reply,
//! by message id. The reader thread hands each reply to its waiter; a disconnect wakes them
//! all.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::transport::Message;

/// How a wait for a reply ended without one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum WaitError {
    /// No reply within the timeout (ETIMEDOUT).
    #[error("no reply within the timeout")]
    Timeout,
    /// The client is gone (ENODEV).
    #[error("the client disconnected")]
    Closed,
    /// Every message id is waiting for a reply (EAGAIN).
    #[error("every message id is in use")]
    Exhausted,
    /// The reply was refused by the transport's limits, with this errno.
    #[error("the reply was refused (errno {0})")]
    Rejected(i32),
}

impl WaitError {
    /// The errno this maps to.
    pub(crate) fn errno(self) -> i32 {
        match self {
            WaitError::Timeout => libc::ETIMEDOUT,
            WaitError::Closed => libc::ENODEV,
            WaitError::Exhausted => libc::EAGAIN,
            WaitError::Rejected(errno) => errno,
        }
    }
}

/// A slot's state.
enum Slot {
    /// Sent, no reply yet.
    Waiting,
    /// The reply.
    Done(Message),
    /// The reply came but was refused (errno).
    Refused(i32),
    /// The waiter gave up (timeout); the id stays taken until the late reply comes, so it is
    /// never matched to a newer request.
    Abandoned,
}

struct State {
    next_id: u16,
    slots: HashMap<u16, Slot>,
    closed: bool,
}

/// The requests in flight to the client.
pub(crate) struct Pending {
    state: Mutex<State>,
    cond: Condvar,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").finish_non_exhaustive()
    }
}

impl Pending {
    /// No request in flight.
    pub(crate) fn new() -> Pending {
        Pending {
            state: Mutex::new(State {
                next_id: 0,
                slots: HashMap::new(),
                closed: false,
            }),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a message id for a request about to be sent.
    pub(crate) fn register(&self) -> Result<u16, WaitError> {
        let mut state = self.lock();
        if state.closed {
            return Err(WaitError::Closed);
        }
        for _ in 0..=u16::MAX as u32 {
            let id = state.next_id;
            state.next_id = state.next_id.wrapping_add(1);
            if let Entry::Vacant(slot) = state.slots.entry(id) {
                slot.insert(Slot::Waiting);
                return Ok(id);
            }
        }
        Err(WaitError::Exhausted)
    }

    /// Gives up on `id` (its send failed); a late reply is dropped.
    pub(crate) fn cancel(&self, id: u16) {
        self.lock().slots.remove(&id);
    }

    /// Hands a reply to its waiter; false if no one waits for its id (it is dropped).
    pub(crate) fn complete(&self, reply: Message) -> bool {
        let id = reply.header.msg_id();
        self.fill(id, Slot::Done(reply))
    }

    /// Tells the waiter for `id` that its reply was refused with `errno`.
    pub(crate) fn refuse(&self, id: u16, errno: i32) -> bool {
        self.fill(id, Slot::Refused(errno))
    }

    fn fill(&self, id: u16, slot: Slot) -> bool {
        let mut state = self.lock();
        match state.slots.get_mut(&id) {
            Some(s @ Slot::Waiting) => {
                *s = slot;
                drop(state);
                self.cond.notify_all();
                true
            }
            // The late reply of a request given up on: drop it, free the id.
            Some(Slot::Abandoned) => {
                state.slots.remove(&id);
                false
            }
            _ => false,
        }
    }

    /// The client is gone: every waiter, and every later request, fails with
    /// [`WaitError::Closed`].
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.cond.notify_all();
    }

    /// Waits up to `timeout` for the reply to `id`, and frees the id.
    pub(crate) fn wait(&self, id: u16, timeout: Duration) -> Result<Message, WaitError> {
        let deadline = Instant::now() + timeout;
        let mut state = self.lock();
        loop {
            match state.slots.remove(&id) {
                Some(Slot::Done(reply)) => return Ok(reply),
                Some(Slot::Refused(errno)) => return Err(WaitError::Rejected(errno)),
                Some(Slot::Waiting) => {
                    state.slots.insert(id, Slot::Waiting);
                }
                Some(Slot::Abandoned) | None => return Err(WaitError::Closed),
            }
            if state.closed {
                state.slots.remove(&id);
                return Err(WaitError::Closed);
            }
            let now = Instant::now();
            if now >= deadline {
                state.slots.insert(id, Slot::Abandoned);
                return Err(WaitError::Timeout);
            }
            state = self
                .cond
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timed_out_id_is_not_reused_until_its_late_reply() {
        let pending = Pending::new();
        let a = pending.register().unwrap();
        assert_eq!(
            pending.wait(a, Duration::ZERO).err(),
            Some(WaitError::Timeout)
        );
        // Every other id can be handed out; `a` is not among them.
        for _ in 0..u16::MAX {
            assert_ne!(pending.register().unwrap(), a);
        }
        assert_eq!(pending.register(), Err(WaitError::Exhausted));
        // The late reply is dropped and frees the id.
        assert!(!pending.refuse(a, libc::EIO));
        assert_eq!(pending.register(), Ok(a));
    }
}
