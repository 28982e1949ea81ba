//! The configuration of an address space.

use std::time::Duration;

use crate::address::IovaRange;
use crate::error::{Error, Result};

/// How an address space ([`crate::Container`]) is set up.
///
/// ```
/// use vdma::{Config, Iova, IovaRange};
/// let config = Config {
///     valid_ranges: vec![IovaRange::new(Iova(0), Iova((1 << 48) - 1))],
///     ..Config::default()
/// };
/// assert_eq!(config.page_size, 4096);
/// ```
#[derive(Clone, Debug)]
pub struct Config {
    /// The minimum page size: a power of two, at least 1. Every map and unmap is aligned to it.
    pub page_size: u64,
    /// The most mappings the space holds at once (type1's `dma_entry_limit`).
    pub max_entries: usize,
    /// The IOVA ranges a mapping may use; a mapping must lie inside one of them.
    pub valid_ranges: Vec<IovaRange>,
    /// How long `unmap`, over its rounds of device unmap callbacks, waits for the pins and
    /// segments ([`crate::Segments`]) on the range to be given back before it fails with EBUSY.
    pub busy_timeout: Duration,
    /// The most bytes that pins may hold locked at once; `None`: the soft RLIMIT_MEMLOCK at
    /// creation. Past it, `pin` fails with ENOMEM.
    pub memlock_limit: Option<u64>,
    /// Whether pinned pages are also `mlock`ed (kept in RAM). Accounting against
    /// `memlock_limit` happens either way.
    pub mlock: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            page_size: 4096,
            max_entries: 65535,
            valid_ranges: vec![IovaRange::ALL],
            busy_timeout: Duration::from_millis(500),
            memlock_limit: None,
            mlock: true,
        }
    }
}

impl Config {
    pub(crate) fn validate(&self) -> Result<()> {
        if !self.page_size.is_power_of_two() {
            return Err(Error::InvalidConfig("page_size must be a power of two"));
        }
        if self.valid_ranges.is_empty() {
            return Err(Error::InvalidConfig("no valid IOVA range"));
        }
        if self.valid_ranges.iter().any(|r| r.start > r.last) {
            return Err(Error::InvalidConfig(
                "a valid IOVA range ends before it starts",
            ));
        }
        Ok(())
    }
}
