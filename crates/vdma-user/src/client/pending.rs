//! Commands in flight: the table that hands out message ids and matches replies to waiting
//! callers ([`Inflight`]), and the caller's side of one command ([`Pending`]).
//!
//! A caller registers a slot (a fresh message id and a one-message channel), then sends. The
//! reader thread takes the slot out when the reply with that id comes, runs the slot's hook
//! (the client's own bookkeeping, e.g. dropping a DMA mapping the server refused) and passes
//! the reply on. A slot stays until its reply comes, even after its caller timed out or gave
//! up, so its id is never reused for another command while the server may still answer it.
//! When the connection ends, every slot gets [`ClientError::Disconnected`] and later
//! registrations fail at once.

use std::collections::HashMap;
use std::fmt;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use crate::client::error::ClientError;
use crate::protocol::{Command, ProtocolError};
use crate::transport::Message;

/// What a waiter gets: the reply (a success reply to its command) or why there is none.
pub(crate) type Outcome = Result<Message, ClientError>;

/// Bookkeeping run by the reader thread when the reply comes, before the waiter sees it;
/// its argument says whether the command succeeded. Not run if the connection ends first.
pub(crate) type Hook = Box<dyn FnOnce(bool) + Send>;

/// Turns a success reply into the caller's result.
type Decode<T> = Box<dyn FnOnce(Message) -> Result<T, ClientError> + Send>;

/// One command waiting for its reply.
struct Slot {
    command: Command,
    tx: SyncSender<Outcome>,
    hook: Option<Hook>,
}

#[derive(Default)]
struct State {
    /// The id to try first for the next command.
    next: u16,
    slots: HashMap<u16, Slot>,
    /// Why the connection ended, once it has.
    closed: Option<String>,
}

/// The commands in flight on one connection, by message id.
#[derive(Default)]
pub(crate) struct Inflight {
    state: Mutex<State>,
}

impl fmt::Debug for Inflight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Inflight")
            .field("in_flight", &state.slots.len())
            .field("closed", &state.closed)
            .finish()
    }
}

impl Inflight {
    /// The state; a poisoned lock is taken as is (every update leaves it consistent).
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reserves a message id for `command`: the first id from the rotating start that no
    /// command in flight holds. Fails if the connection is gone or every id is taken.
    pub(crate) fn register(
        &self,
        command: Command,
        hook: Option<Hook>,
    ) -> Result<(u16, Receiver<Outcome>), ClientError> {
        let mut state = self.lock();
        if let Some(reason) = &state.closed {
            return Err(ClientError::Disconnected {
                reason: reason.clone(),
            });
        }
        let start = state.next;
        let mut id = start;
        while state.slots.contains_key(&id) {
            id = id.wrapping_add(1);
            if id == start {
                return Err(ClientError::TooManyInFlight);
            }
        }
        state.next = id.wrapping_add(1);
        let (tx, rx) = mpsc::sync_channel(1);
        state.slots.insert(id, Slot { command, tx, hook });
        Ok((id, rx))
    }

    /// Takes back a slot whose command could not be sent, and returns its hook.
    pub(crate) fn cancel(&self, msg_id: u16) -> Option<Hook> {
        self.lock().slots.remove(&msg_id).and_then(|s| s.hook)
    }

    /// Hands a reply to the command with its id: an error reply becomes
    /// [`ClientError::Server`], a reply with another command's number a
    /// [`ProtocolError::ReplyMismatch`]. A reply nobody waits for (a stray id) is dropped;
    /// returns whether someone waited.
    pub(crate) fn deliver(&self, message: Message) -> bool {
        let header = message.header;
        let Some(slot) = self.lock().slots.remove(&header.msg_id()) else {
            return false;
        };
        let outcome = if header.command_number() != slot.command.number() {
            Err(ClientError::Protocol(ProtocolError::ReplyMismatch {
                command: slot.command,
                field: "command",
                expected: u64::from(slot.command.number()),
                got: u64::from(header.command_number()),
            }))
        } else if header.is_error() {
            Err(ClientError::Server {
                command: slot.command,
                errno: i32::try_from(header.error()).unwrap_or(libc::EIO),
            })
        } else {
            Ok(message)
        };
        finish(slot, outcome);
        true
    }

    /// Fails the command with id `msg_id` with `error` (a reply that could not be received
    /// whole); returns whether someone waited.
    pub(crate) fn fail(&self, msg_id: u16, error: ClientError) -> bool {
        let Some(slot) = self.lock().slots.remove(&msg_id) else {
            return false;
        };
        finish(slot, Err(error));
        true
    }

    /// Ends the connection: every command in flight fails with
    /// [`ClientError::Disconnected`], and so does every later registration.
    pub(crate) fn close(&self, reason: String) {
        let slots: Vec<Slot> = {
            let mut state = self.lock();
            if state.closed.is_none() {
                state.closed = Some(reason.clone());
            }
            state.slots.drain().map(|(_, s)| s).collect()
        };
        for slot in slots {
            // The waiter may be gone; nothing to do then.
            let _ = slot.tx.send(Err(ClientError::Disconnected {
                reason: reason.clone(),
            }));
        }
    }

    /// Commands sent and not yet answered (timed-out ones included).
    pub(crate) fn len(&self) -> usize {
        self.lock().slots.len()
    }

    /// Why the connection ended, if it has.
    pub(crate) fn closed(&self) -> Option<String> {
        self.lock().closed.clone()
    }
}

/// Runs the slot's hook, then wakes its waiter (if still there).
fn finish(slot: Slot, outcome: Outcome) {
    if let Some(hook) = slot.hook {
        hook(outcome.is_ok());
    }
    let _ = slot.tx.send(outcome);
}

/// A command sent and not yet answered. [`Pending::wait`] blocks for the reply and decodes
/// it. Dropping a `Pending` abandons the wait, not the command: the client's bookkeeping still
/// follows the server's answer when it comes.
#[must_use = "a Pending does nothing unless waited for"]
pub struct Pending<T> {
    rx: Receiver<Outcome>,
    command: Command,
    msg_id: u16,
    timeout: Duration,
    decode: Decode<T>,
}

impl<T> fmt::Debug for Pending<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pending")
            .field("command", &self.command)
            .field("msg_id", &self.msg_id)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl<T> Pending<T> {
    pub(crate) fn new(
        rx: Receiver<Outcome>,
        command: Command,
        msg_id: u16,
        timeout: Duration,
        decode: Decode<T>,
    ) -> Pending<T> {
        Pending {
            rx,
            command,
            msg_id,
            timeout,
            decode,
        }
    }

    /// The command.
    pub fn command(&self) -> Command {
        self.command
    }

    /// The message id it went out with.
    pub fn msg_id(&self) -> u16 {
        self.msg_id
    }

    /// Waits for the reply for at most the client's timeout, and decodes it.
    pub fn wait(self) -> Result<T, ClientError> {
        let timeout = self.timeout;
        self.wait_timeout(timeout)
    }

    /// Waits for the reply for at most `timeout`, and decodes it.
    pub fn wait_timeout(self, timeout: Duration) -> Result<T, ClientError> {
        match self.rx.recv_timeout(timeout) {
            Ok(Ok(message)) => (self.decode)(message),
            Ok(Err(error)) => Err(error),
            Err(RecvTimeoutError::Timeout) => Err(ClientError::Timeout {
                command: self.command,
                msg_id: self.msg_id,
                after: timeout,
            }),
            Err(RecvTimeoutError::Disconnected) => Err(ClientError::Disconnected {
                reason: "the reply channel closed".into(),
            }),
        }
    }
}
