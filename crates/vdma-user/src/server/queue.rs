//! [`Queue`]: the client's commands, from the reader thread to the handler thread, in order,
//! bounded in bytes.
//!
//! The bound gives back-pressure: a client that sends faster than the device handles waits in
//! the socket. It is large (many DMA_MAPs in flight fit easily) because the reader stalls
//! while the queue is full, and a DMA reply behind the stalled commands then waits too (until
//! the DMA request times out).

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::protocol::{Header, ProtocolError};
use crate::transport::{Message, TransportError};

/// One thing the handler must deal with.
#[derive(Debug)]
pub(crate) enum Item {
    /// A command (type bits not "reply"); decoding happens on the handler.
    Command(Message),
    /// A command the transport refused (too large, too many descriptors).
    Rejected {
        /// Its header.
        header: Header,
        /// Why.
        error: ProtocolError,
    },
}

/// How the queue ended.
#[derive(Debug)]
pub(crate) enum End {
    /// The client closed the connection between messages.
    Closed,
    /// The connection failed (framing lost, socket error, shut down).
    Failed(TransportError),
}

/// What [`Queue::pop`] returns.
#[derive(Debug)]
pub(crate) enum Popped {
    /// The next item.
    Item(Item),
    /// Nothing within the timeout.
    Idle,
    /// The reader ended and every item is handled.
    End(End),
}

struct State {
    items: VecDeque<(Item, usize)>,
    bytes: usize,
    end: Option<End>,
    /// The handler is gone; pushes are dropped.
    abandoned: bool,
}

/// The command queue.
pub(crate) struct Queue {
    state: Mutex<State>,
    /// Signalled when an item or the end arrives.
    filled: Condvar,
    /// Signalled when room frees up.
    drained: Condvar,
    max_bytes: usize,
}

impl Queue {
    /// An empty queue holding at most `max_bytes` of messages (one message always fits).
    pub(crate) fn new(max_bytes: usize) -> Queue {
        Queue {
            state: Mutex::new(State {
                items: VecDeque::new(),
                bytes: 0,
                end: None,
                abandoned: false,
            }),
            filled: Condvar::new(),
            drained: Condvar::new(),
            max_bytes,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Appends an item, waiting while the queue is full.
    pub(crate) fn push(&self, item: Item) {
        let size = match &item {
            Item::Command(m) => Header::SIZE + m.payload.len(),
            Item::Rejected { .. } => Header::SIZE,
        };
        let mut state = self.lock();
        while !state.abandoned && state.bytes != 0 && state.bytes + size > self.max_bytes {
            state = self.drained.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        if state.abandoned {
            return;
        }
        state.bytes += size;
        state.items.push_back((item, size));
        drop(state);
        self.filled.notify_one();
    }

    /// Ends the queue: after the items already in it, [`Queue::pop`] returns the end.
    pub(crate) fn finish(&self, end: End) {
        let mut state = self.lock();
        if state.end.is_none() {
            state.end = Some(end);
        }
        drop(state);
        self.filled.notify_one();
    }

    /// The handler stops taking items: a reader blocked in [`Queue::push`] returns.
    pub(crate) fn abandon(&self) {
        let mut state = self.lock();
        state.abandoned = true;
        state.items.clear();
        state.bytes = 0;
        drop(state);
        self.drained.notify_all();
    }

    /// The next item, waiting up to `timeout`.
    pub(crate) fn pop(&self, timeout: Duration) -> Popped {
        let mut state = self.lock();
        if state.items.is_empty() && state.end.is_none() {
            state = self
                .filled
                .wait_timeout(state, timeout)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        if let Some((item, size)) = state.items.pop_front() {
            state.bytes -= size;
            drop(state);
            self.drained.notify_all();
            return Popped::Item(item);
        }
        match state.end.take() {
            Some(end) => Popped::End(end),
            None => Popped::Idle,
        }
    }
}
