//! VERSION: the version numbers and the JSON capabilities each side sends once, first.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;
use zerocopy::little_endian::U16;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::protocol::command::Command;
use crate::protocol::error::ProtocolError;
use crate::protocol::wire::{fds_at_most, read_prefix};

/// The fixed part of a VERSION payload; the NUL-terminated JSON follows.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Default,
    FromBytes,
    IntoBytes,
    KnownLayout,
    Immutable,
    Unaligned,
)]
#[repr(C)]
pub struct VersionHeader {
    /// Major version; both sides must agree.
    pub major: U16,
    /// Minor version; the reply's is at most the request's.
    pub minor: U16,
}

/// The capabilities object: what the sender supports. Every member is optional; an absent
/// member means the protocol's default (see the accessors). Unknown members are ignored;
/// a member of the wrong type (a string for a number, a negative or fractional number, a
/// number too large for its field, `null`) is an error.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    /// Most file descriptors the sender can receive in one message (default 1).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub max_msg_fds: Option<u32>,
    /// Most bytes of data in one REGION/DMA read or write (default 1 MiB).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub max_data_xfer_size: Option<u64>,
    /// Most DMA mappings at once (default 65535).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub max_dma_maps: Option<u32>,
    /// Page sizes supported in DMA_MAP, OR'ed together (default 4096).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub pgsizes: Option<u64>,
    /// Dirty-page tracking parameters.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub migration: Option<MigrationCapability>,
    /// Whether REGION_WRITE_MULTI is supported.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub write_multiple: Option<bool>,
    /// Twin-socket mode (server-to-client commands on their own socket).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub twin_socket: Option<TwinSocket>,
}

/// The `migration` capability object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationCapability {
    /// The dirty-tracking page size.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub pgsize: Option<u64>,
    /// The largest dirty bitmap, in bytes.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub max_bitmap_size: Option<u64>,
}

/// The `twin_socket` capability object.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TwinSocket {
    /// Whether the sender supports (request) or enabled (reply) twin-socket mode.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub supported: Option<bool>,
    /// In a reply: the index, among the reply's file descriptors, of the new socket.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    pub fd_index: Option<u32>,
}

/// Deserializes a present member as `Some`, so that `null` is a type error, not "absent".
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl Capabilities {
    /// The protocol's default for `max_msg_fds`.
    pub const DEFAULT_MAX_MSG_FDS: u32 = 1;
    /// The protocol's default for `max_data_xfer_size`.
    pub const DEFAULT_MAX_DATA_XFER_SIZE: u64 = 1 << 20;
    /// The protocol's default for `max_dma_maps`.
    pub const DEFAULT_MAX_DMA_MAPS: u32 = 65535;
    /// The protocol's default for `pgsizes`.
    pub const DEFAULT_PGSIZES: u64 = 4096;

    /// `max_msg_fds`, or its default.
    pub fn max_msg_fds_or_default(&self) -> u32 {
        self.max_msg_fds
            .unwrap_or(Capabilities::DEFAULT_MAX_MSG_FDS)
    }

    /// `max_data_xfer_size`, or its default.
    pub fn max_data_xfer_size_or_default(&self) -> u64 {
        self.max_data_xfer_size
            .unwrap_or(Capabilities::DEFAULT_MAX_DATA_XFER_SIZE)
    }

    /// `max_dma_maps`, or its default.
    pub fn max_dma_maps_or_default(&self) -> u32 {
        self.max_dma_maps
            .unwrap_or(Capabilities::DEFAULT_MAX_DMA_MAPS)
    }

    /// `pgsizes`, or its default.
    pub fn pgsizes_or_default(&self) -> u64 {
        self.pgsizes.unwrap_or(Capabilities::DEFAULT_PGSIZES)
    }
}

/// The JSON document: `{"capabilities": {...}}`.
#[derive(Serialize, Deserialize)]
struct Document {
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "present"
    )]
    capabilities: Option<Capabilities>,
}

/// A VERSION message's payload, request or reply.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Version {
    /// Major version (QEMU and libvfio-user speak 0).
    pub major: u16,
    /// Minor version (0).
    pub minor: u16,
    /// The capabilities; `None` when the message has no JSON or the JSON has no
    /// `capabilities` member.
    pub capabilities: Option<Capabilities>,
}

impl Version {
    /// Decodes a VERSION payload: 4 bytes of version, then optionally the JSON with its
    /// terminating NUL. VERSION carries no file descriptor.
    pub fn decode(payload: &[u8], nfds: usize) -> Result<Version, ProtocolError> {
        let (fixed, data) = read_prefix::<VersionHeader>(Command::Version, payload)?;
        fds_at_most(Command::Version, nfds, 0, "VERSION carries none")?;
        let capabilities = if data.is_empty() {
            None
        } else {
            let Some((&0, json)) = data.split_last() else {
                return Err(ProtocolError::VersionNotTerminated);
            };
            parse_capabilities(json)?
        };
        Ok(Version {
            major: fixed.major.get(),
            minor: fixed.minor.get(),
            capabilities,
        })
    }

    /// The payload: version, then the capabilities as compact JSON with its NUL (none when
    /// `capabilities` is `None`). Compact matters: QEMU takes a VERSION reply no longer than
    /// its own request (214 bytes).
    pub fn encode(&self) -> Result<Vec<u8>, ProtocolError> {
        let mut out = VersionHeader {
            major: U16::new(self.major),
            minor: U16::new(self.minor),
        }
        .as_bytes()
        .to_vec();
        if let Some(caps) = &self.capabilities {
            let doc = Document {
                capabilities: Some(caps.clone()),
            };
            let json =
                serde_json::to_vec(&doc).map_err(|e| ProtocolError::Capabilities(e.to_string()))?;
            out.extend_from_slice(&json);
            out.push(0);
        }
        Ok(out)
    }
}

/// Parses the JSON (without its NUL). Objects must be objects: serde would otherwise accept an
/// array for a struct, member by position.
fn parse_capabilities(json: &[u8]) -> Result<Option<Capabilities>, ProtocolError> {
    let bad = |e: serde_json::Error| ProtocolError::Capabilities(e.to_string());
    let value: Value = serde_json::from_slice(json).map_err(bad)?;
    let Value::Object(top) = &value else {
        return Err(ProtocolError::Capabilities(
            "the document is not an object".into(),
        ));
    };
    if let Some(caps) = top.get("capabilities") {
        let Value::Object(members) = caps else {
            return Err(ProtocolError::Capabilities(
                "capabilities is not an object".into(),
            ));
        };
        for name in ["migration", "twin_socket"] {
            if let Some(v) = members.get(name) {
                if !v.is_object() {
                    return Err(ProtocolError::Capabilities(format!(
                        "{name} is not an object"
                    )));
                }
            }
        }
    }
    let doc: Document = serde_json::from_value(value).map_err(bad)?;
    Ok(doc.capabilities)
}
