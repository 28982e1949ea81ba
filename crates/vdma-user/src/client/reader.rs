//! The reader thread: receives every message from the server. Replies go to the commands
//! waiting for them ([`Inflight::deliver`](crate::client::pending::Inflight::deliver));
//! requests go to the DMA service thread, so that the reader never writes and never stops
//! reading while a reply is sent. When the connection ends, every command in flight fails.

use std::sync::mpsc::SyncSender;
use std::sync::Arc;

use crate::client::dma_service::Work;
use crate::client::error::ClientError;
use crate::client::inner::Inner;
use crate::transport::{Reader, Received};

/// Receives until the connection ends, then fails what is in flight. Returning drops
/// `work`, which ends the DMA service thread.
pub(crate) fn run(mut reader: Reader, inner: Arc<Inner>, work: SyncSender<Work>) {
    let reason = loop {
        match reader.receive() {
            Ok(Received::Message(message)) => {
                let header = message.header;
                if header.is_reply() {
                    match header.check(u32::MAX) {
                        Ok(_) => {
                            inner.inflight.deliver(message);
                        }
                        Err(error) => {
                            inner
                                .inflight
                                .fail(header.msg_id(), ClientError::Protocol(error));
                        }
                    }
                } else if work.send(Work::Request(message)).is_err() {
                    break "the DMA service thread ended".to_string();
                }
            }
            Ok(Received::Rejected { header, error }) => {
                if header.is_reply() {
                    inner
                        .inflight
                        .fail(header.msg_id(), ClientError::Protocol(error));
                } else if header.wants_reply()
                    && work.send(Work::Refuse(header, error.errno())).is_err()
                {
                    break "the DMA service thread ended".to_string();
                }
            }
            Ok(Received::Closed) => break "the server closed the connection".to_string(),
            Err(error) => break format!("receiving failed: {error}"),
        }
    };
    let reason = if inner.is_closing() {
        "the client closed the connection".to_string()
    } else {
        reason
    };
    inner.inflight.close(reason);
    // Nothing reads the socket any more: make sure the server sees the end too.
    let _ = inner.writer.shutdown();
}
