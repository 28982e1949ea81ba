//! One client's session: the threads, VERSION negotiation, the command loop and the cleanup
//! at disconnect.
//!
//! Two threads serve a client:
//!
//! - the **reader** receives every message. A reply (type bits 1) answers one of the server's
//!   DMA_READ/DMA_WRITE requests and goes straight to its waiter by message id
//!   ([`Pending`]); a command goes to the [`Queue`]. The reader never waits for the device, so
//!   replies keep flowing while a command is being handled.
//! - the **handler** (the thread that called the server) takes commands from the queue in the
//!   order they came and handles them one at a time ([`Commands`]); a handler blocked in a DMA
//!   round trip gets its reply from the reader.
//!
//! At the end (the client closed, the connection failed, or the server stops): every waiting
//! DMA request fails with ENODEV, everything is unmapped (pins asked back through the device's
//! unmap callback), DMA logging stops, every interrupt type is disabled (eventfds dropped), the
//! device's handle is taken back ([`Device::disconnect`]).

use std::io;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

use vdma::DeviceHandle;

use crate::protocol::{
    error_reply, flags, DecodeConfig, DmaLayout, Header, Request, Version, IRQ_INFO_EVENTFD,
};
use crate::server::commands::{Commands, Reply};
use crate::server::device::{Device, IrqAction, IrqRequest, IrqSetData};
use crate::server::dma_memory::DmaChannel;
use crate::server::error::{CommandError, ServerError};
use crate::server::pending::Pending;
use crate::server::queue::{End, Item, Popped, Queue};
use crate::server::{SessionEnd, Shared};
use crate::transport::{Connection, Limits, Message, Reader, Received, Writer};

/// How often the handler looks at the stop flag while the client is idle.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Serves one connected client until it leaves or the server stops.
pub(crate) fn run(shared: &Shared, socket: UnixStream) -> Result<SessionEnd, ServerError> {
    socket
        .set_write_timeout(Some(shared.config.send_timeout))
        .map_err(|source| ServerError::Io {
            op: "setsockopt(SO_SNDTIMEO)",
            source,
        })?;
    let limits = Limits {
        max_message_size: DecodeConfig::new(shared.config.max_data_xfer_size, Default::default())
            .max_message_size,
        max_fds: shared.config.max_msg_fds as usize,
    };
    let (reader, writer) = Connection::new(socket, limits)?.split();
    let queue = Arc::new(Queue::new(shared.config.queue_bytes));
    let pending = Arc::new(Pending::new());
    let reader_thread = {
        let (queue, pending) = (queue.clone(), pending.clone());
        ReaderThread::start(shared, move || read_loop(reader, &queue, &pending)).map_err(
            |source| ServerError::Io {
                op: "spawn",
                source,
            },
        )?
    };
    let mut session = Session {
        shared,
        writer: writer.clone(),
        pending: pending.clone(),
        commands: None,
    };
    let end = session.serve(&queue);
    // Cleanup: the reader stops (the socket is shut down), waiters fail, then the device lets go.
    queue.abandon();
    pending.close();
    let _ = writer.shutdown();
    reader_thread.join();
    session.disconnect();
    Ok(end)
}

/// The session's reader loop, on a thread of its own or on one from
/// [`crate::server::Server::with_reader_spawner`].
enum ReaderThread {
    Own(thread::JoinHandle<()>),
    /// Disconnected when the job is over (returned or unwound): its sender is dropped then.
    Lent(mpsc::Receiver<()>),
}

impl ReaderThread {
    fn start(shared: &Shared, job: impl FnOnce() + Send + 'static) -> io::Result<ReaderThread> {
        let Some(spawn) = &shared.spawn_reader else {
            return thread::Builder::new()
                .name("vfio-user-reader".into())
                .spawn(job)
                .map(ReaderThread::Own);
        };
        let (over, wait) = mpsc::sync_channel::<()>(0);
        spawn(Box::new(move || {
            // Dropped last: after the job and everything it holds (the socket's reader, the
            // queue), also when it unwinds.
            let _over = over;
            job();
        }))?;
        Ok(ReaderThread::Lent(wait))
    }

    /// Waits for the reader loop to end (a panic there is not propagated).
    fn join(self) {
        match self {
            ReaderThread::Own(thread) => {
                let _ = thread.join();
            }
            ReaderThread::Lent(wait) => {
                // Nothing is ever sent: this returns when the job's sender is dropped.
                let _ = wait.recv();
            }
        }
    }
}

/// The reader thread: routes replies to their waiters, queues commands.
fn read_loop(mut reader: Reader, queue: &Queue, pending: &Pending) {
    loop {
        match reader.receive() {
            Ok(Received::Message(m)) => {
                if m.header.is_reply() {
                    // A reply no one waits for (late, after a timeout; or bogus) is dropped.
                    pending.complete(m);
                } else {
                    queue.push(Item::Command(m));
                }
            }
            Ok(Received::Rejected { header, error }) => {
                if header.is_reply() {
                    pending.refuse(header.msg_id(), error.errno());
                } else {
                    queue.push(Item::Rejected { header, error });
                }
            }
            Ok(Received::Closed) => {
                pending.close();
                queue.finish(End::Closed);
                return;
            }
            Err(e) => {
                pending.close();
                queue.finish(End::Failed(e));
                return;
            }
        }
    }
}

/// The handler's state.
struct Session<'a> {
    shared: &'a Shared,
    writer: Writer,
    pending: Arc<Pending>,
    /// After VERSION: the negotiated command handling (and the device is connected).
    commands: Option<Commands<'a>>,
}

impl<'a> Session<'a> {
    /// Handles items until the queue ends or the server stops.
    fn serve(&mut self, queue: &Queue) -> SessionEnd {
        loop {
            match queue.pop(STOP_POLL) {
                Popped::Idle => {
                    if self.shared.stop.load(Ordering::SeqCst) {
                        // The reader sees the shutdown and ends the queue.
                        let _ = self.writer.shutdown();
                    }
                }
                Popped::Item(Item::Command(message)) => {
                    if !self.command(message) {
                        let _ = self.writer.shutdown();
                    }
                }
                Popped::Item(Item::Rejected { header, error }) => {
                    if header.wants_reply() && !self.send_error(&header, error.errno()) {
                        let _ = self.writer.shutdown();
                    }
                }
                Popped::End(_) if self.shared.stop.load(Ordering::SeqCst) => {
                    return SessionEnd::Stopped
                }
                Popped::End(End::Closed) => return SessionEnd::Closed,
                Popped::End(End::Failed(e)) => return SessionEnd::Failed(e),
            }
        }
    }

    /// Handles one command and replies; false if the reply could not be sent.
    fn command(&mut self, message: Message) -> bool {
        let header = message.header;
        let result = match &mut self.commands {
            Some(commands) => commands.handle(message),
            None => self.negotiate(message),
        };
        if !header.wants_reply() {
            return true;
        }
        match result {
            Ok(reply) => self.send_reply(&header, &reply),
            Err(e) => self.send_error(&header, e.errno()),
        }
    }

    fn send_reply(&self, request: &Header, reply: &Reply) -> bool {
        let Ok(size) = u32::try_from(Header::SIZE + reply.payload.len()) else {
            return self.send_error(request, libc::E2BIG);
        };
        let header = Header::new(
            request.msg_id(),
            request.command_number(),
            size,
            flags::TYPE_REPLY,
            0,
        );
        let fds: Vec<_> = reply.fd.iter().map(std::os::fd::AsFd::as_fd).collect();
        self.writer
            .send_payload(&header, &reply.payload, &fds)
            .is_ok()
    }

    fn send_error(&self, request: &Header, errno: i32) -> bool {
        self.writer.send(&error_reply(request, errno), &[]).is_ok()
    }

    /// The first command must be VERSION: agree on version 0.x, reply with the server's
    /// capabilities, pick the DMA layout, and connect the device.
    fn negotiate(&mut self, message: Message) -> Result<Reply, CommandError> {
        let config = &self.shared.config;
        let decode = DecodeConfig::new(config.max_data_xfer_size, Default::default());
        let request = Request::decode(
            &message.header,
            &message.payload,
            message.fds.len(),
            &decode,
        )?;
        let Request::Version(version) = request else {
            return Err(CommandError::Invalid("the first command must be VERSION"));
        };
        if version.major != 0 {
            return Err(CommandError::NotSupported("only major version 0"));
        }
        let caps = version.capabilities.as_ref();
        let layout = config.dma_layout.resolve(caps);
        let client_xfer = caps.map_or(
            crate::protocol::Capabilities::DEFAULT_MAX_DATA_XFER_SIZE,
            |c| c.max_data_xfer_size_or_default(),
        );
        let mut chunk = client_xfer.min(u64::from(config.max_data_xfer_size)).max(1);
        if layout == DmaLayout::Qemu {
            chunk = chunk.min(u64::from(config.qemu_dma_chunk));
        }
        let reply = Version {
            major: 0,
            minor: 0,
            capabilities: Some(config.capabilities()),
        };
        let payload = reply.encode()?;
        let channel = Arc::new(DmaChannel::new(
            self.writer.clone(),
            self.pending.clone(),
            layout,
            usize::try_from(chunk).unwrap_or(usize::MAX),
            config.reply_timeout,
        ));
        let handle = self.connect()?;
        self.commands = Some(Commands::new(
            self.shared,
            DecodeConfig::new(config.max_data_xfer_size, layout),
            channel,
            handle,
        ));
        Ok(Reply::new(payload))
    }

    /// Gives the device its handle (and registers its unmap callback); returns the session's
    /// own handle, for DMA logging.
    fn connect(&self) -> Result<DeviceHandle, CommandError> {
        let shared = self.shared;
        let own = shared.container.device_handle(&shared.device_id)?;
        let for_device = shared.container.device_handle(&shared.device_id)?;
        // A weak reference: the callback lives in the address space, which the device's handle
        // keeps alive; a strong one would be a cycle.
        let device = Arc::downgrade(&shared.device);
        own.set_unmap_callback(move |iova, size| {
            if let Some(device) = device.upgrade() {
                device.dma_unmapped(iova, size);
            }
        });
        shared.device.connect(for_device);
        Ok(own)
    }

    /// The client is gone: unmap everything, stop logging, disable interrupts, take the
    /// device's handle back.
    fn disconnect(&mut self) {
        let Some(commands) = self.commands.take() else {
            return;
        };
        let shared = self.shared;
        let handle = commands.into_handle();
        let unmapped = shared.container.unmap_all();
        let _ = handle.dma_logging_stop();
        let _ = shared.container.dirty_stop();
        let device: &Arc<dyn Device> = &shared.device;
        let description = device.description();
        for index in 0..description.num_irqs {
            let has_eventfds = device
                .irq_info(index)
                .is_ok_and(|irq| irq.count != 0 && irq.flags & IRQ_INFO_EVENTFD != 0);
            if has_eventfds {
                let _ = device.set_irqs(IrqRequest {
                    index,
                    start: 0,
                    count: 0,
                    action: IrqAction::Trigger,
                    data: IrqSetData::None,
                });
            }
        }
        device.disconnect();
        if unmapped.is_err() {
            // Pins the device held until it let go: they are given back now.
            let _ = shared.container.unmap_all();
        }
        handle.clear_unmap_callback();
        drop(handle);
    }
}
