//! Device DMA logging through DEVICE_FEATURE: start logging the pages the device writes,
//! stop, and read (and clear) the log of a range.

use zerocopy::little_endian::{U32, U64};
use zerocopy::IntoBytes;

use crate::client::error::ClientError;
use crate::client::Client;
use crate::protocol::{
    dirty_bitmap_bytes, encode_feature, Command, DeviceFeature, DeviceFeatureReply,
    DmaLoggingControl, DmaLoggingRange, DmaLoggingReport, FEATURE_DMA_LOGGING_REPORT,
    FEATURE_DMA_LOGGING_START, FEATURE_DMA_LOGGING_STOP, FEATURE_GET, FEATURE_SET,
};
use crate::transport::Message;

impl Client {
    /// DMA_LOGGING_START: the device logs the pages it writes in `ranges` (`(iova, length)`;
    /// none means all of memory) at `page_size` granularity.
    pub fn dma_logging_start(
        &self,
        page_size: u64,
        ranges: &[(u64, u64)],
    ) -> Result<(), ClientError> {
        let num_ranges = u32::try_from(ranges.len()).map_err(|_| ClientError::InvalidArgument {
            reason: "too many ranges",
        })?;
        let mut data = DmaLoggingControl {
            page_size: U64::new(page_size),
            num_ranges: U32::new(num_ranges),
            reserved: U32::new(0),
        }
        .as_bytes()
        .to_vec();
        for &(iova, length) in ranges {
            data.extend_from_slice(DmaLoggingRange::new(iova, length).as_bytes());
        }
        let payload = encode_feature(FEATURE_SET | u32::from(FEATURE_DMA_LOGGING_START), &data);
        self.request(Command::DeviceFeature, &payload, &[], |_| Ok(()))
    }

    /// DMA_LOGGING_STOP.
    pub fn dma_logging_stop(&self) -> Result<(), ClientError> {
        let payload = encode_feature(FEATURE_SET | u32::from(FEATURE_DMA_LOGGING_STOP), &[]);
        self.request(Command::DeviceFeature, &payload, &[], |_| Ok(()))
    }

    /// DMA_LOGGING_REPORT: the bitmap of the pages the device wrote in `[iova, iova +
    /// length)` since the last report, one bit per `page_size` bytes, in whole u64 words;
    /// the server clears what it reports.
    pub fn dma_logging_report(
        &self,
        iova: u64,
        length: u64,
        page_size: u64,
    ) -> Result<Vec<u8>, ClientError> {
        let c = Command::DeviceFeature;
        let bitmap = dirty_bitmap_bytes(length, page_size).ok_or(ClientError::InvalidArgument {
            reason: "dirty page size 0",
        })?;
        let fixed = (size_of::<DeviceFeature>() + size_of::<DmaLoggingReport>()) as u64;
        let argsz = fixed
            .checked_add(bitmap)
            .filter(|&a| a + 16 <= u64::from(self.inner.decode.max_message_size))
            .and_then(|a| u32::try_from(a).ok())
            .ok_or(ClientError::InvalidArgument {
                reason: "the dirty bitmap does not fit one message",
            })?;
        let report = DmaLoggingReport {
            iova: U64::new(iova),
            length: U64::new(length),
            page_size: U64::new(page_size),
        };
        let mut payload = DeviceFeature {
            argsz: U32::new(argsz),
            flags: U32::new(FEATURE_GET | u32::from(FEATURE_DMA_LOGGING_REPORT)),
        }
        .as_bytes()
        .to_vec();
        payload.extend_from_slice(report.as_bytes());
        self.request(c, &payload, &[], move |m: Message| {
            let reply = DeviceFeatureReply::decode(&m.payload, m.fds.len())?;
            let (got, bits) = reply.logging_report()?;
            if got != report {
                return Err(ClientError::BadReply {
                    command: c,
                    reason: "a report of another range or page size",
                });
            }
            Ok(bits.to_vec())
        })
    }
}
