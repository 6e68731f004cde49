//! Versioned binary formats that cross process boundaries: the agent
//! descriptor, control-channel messages and notification headers.
//! Everything read here comes from another process and is untrusted: every
//! length is bounds-checked before use and every count is capped.
//!
//! Integers are little-endian; strings and blobs are `u32` length + bytes.

use super::error::{Error, Result};
use super::memory::kvx_memory_type;

/// First bytes of an agent descriptor.
pub const AGENT_DESC_MAGIC: [u8; 4] = *b"KVXD";
/// Agent descriptor version without optional sections (what a host-only
/// agent writes, so older readers keep loading it).
pub const AGENT_DESC_VERSION: u16 = 1;
/// Version 2 appends the optional CUDA IPC section after the regions.
pub const AGENT_DESC_VERSION_IPC: u16 = 2;
/// First bytes of a control-channel frame body.
pub const CONTROL_MAGIC: [u8; 4] = *b"KVXC";
pub const CONTROL_VERSION: u8 = 1;

pub const MAX_NAME_LEN: usize = 1024;
pub const MAX_ENDPOINT_BLOB: usize = 64 * 1024;
pub const MAX_KEY_BLOB: usize = 64 * 1024;
pub const MAX_REGIONS: usize = 1 << 20;
/// Largest control frame or descriptor accepted from a peer.
pub const MAX_FRAME: usize = 256 << 20;
/// Largest notification payload (sync message).
pub const MAX_NOTIFICATION: usize = 16 << 20;

/// Bounds-checked cursor over untrusted bytes.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        Reader { bytes, pos: 0 }
    }
    pub fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }
    pub fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(Error::malformed(format!(
                "truncated: {what} needs {n} bytes at offset {}, {} left",
                self.pos,
                self.remaining()
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }
    pub fn u8(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }
    pub fn u16(&mut self, what: &str) -> Result<u16> {
        Ok(u16::from_le_bytes(self.take(2, what)?.try_into().unwrap()))
    }
    pub fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().unwrap()))
    }
    pub fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().unwrap()))
    }
    pub fn blob(&mut self, max: usize, what: &str) -> Result<&'a [u8]> {
        let len = self.u32(what)? as usize;
        if len > max {
            return Err(Error::malformed(format!("{what} length {len} exceeds limit {max}")));
        }
        self.take(len, what)
    }
    pub fn string(&mut self, max: usize, what: &str) -> Result<String> {
        let raw = self.blob(max, what)?;
        String::from_utf8(raw.to_vec()).map_err(|_| Error::malformed(format!("{what} is not UTF-8")))
    }
    pub fn finish(&self, what: &str) -> Result<()> {
        if self.remaining() != 0 {
            return Err(Error::malformed(format!("{} trailing bytes after {what}", self.remaining())));
        }
        Ok(())
    }
}

/// Append-only writer matching `Reader`.
#[derive(Default)]
pub struct Writer {
    pub bytes: Vec<u8>,
}

impl Writer {
    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.bytes.push(v);
        self
    }
    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.bytes.extend_from_slice(&v.to_le_bytes());
        self
    }
    pub fn raw(&mut self, v: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(v);
        self
    }
    pub fn blob(&mut self, v: &[u8]) -> &mut Self {
        self.u32(u32::try_from(v.len()).expect("blob over 4 GiB"));
        self.raw(v)
    }
}

/// A registered region as a peer sees it: where it is and the backend's key
/// that grants remote access (a packed UCX rkey).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteRegion {
    pub addr: u64,
    pub len: u64,
    pub mem_type: kvx_memory_type,
    pub device_id: u32,
    pub key: Vec<u8>,
}

/// Everything a peer needs to reach an agent and its memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentDescriptor {
    /// Backend that produced it (`kvx_backend` value); peers must match.
    pub backend: u8,
    pub name: String,
    /// Backend endpoint address (a packed UCX worker address).
    pub endpoint: Vec<u8>,
    pub regions: Vec<RemoteRegion>,
    /// CUDA IPC exports of device regions, for peers on the same host.
    pub ipc: Option<IpcSection>,
}

pub const IPC_HANDLE_LEN: usize = 64;
const MAX_HOST_ID: usize = 256;

/// Device regions a process on the same host can map directly (CUDA IPC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcSection {
    /// The exporting host's identity (its boot id): handles are useless elsewhere.
    pub host: Vec<u8>,
    /// The exporting process: a process cannot open its own handles.
    pub pid: u32,
    pub regions: Vec<IpcRegion>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpcRegion {
    /// Index into the descriptor's regions.
    pub region: u32,
    /// The allocation's CUDA IPC handle.
    pub handle: [u8; IPC_HANDLE_LEN],
    /// Where the region starts inside that allocation.
    pub offset: u64,
}

impl AgentDescriptor {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        let version = if self.ipc.is_some() { AGENT_DESC_VERSION_IPC } else { AGENT_DESC_VERSION };
        w.raw(&AGENT_DESC_MAGIC).u16(version).u8(self.backend).u8(0);
        w.blob(self.name.as_bytes()).blob(&self.endpoint);
        w.u32(self.regions.len() as u32);
        for r in &self.regions {
            w.u64(r.addr).u64(r.len).u8(r.mem_type as u8).u32(r.device_id).blob(&r.key);
        }
        if let Some(ipc) = &self.ipc {
            w.blob(&ipc.host).u32(ipc.pid).u32(ipc.regions.len() as u32);
            for r in &ipc.regions {
                w.u32(r.region).raw(&r.handle).u64(r.offset);
            }
        }
        let sum = checksum(&w.bytes);
        w.u64(sum);
        w.bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        if bytes.len() > MAX_FRAME {
            return Err(Error::malformed(format!("agent descriptor of {} bytes is too large", bytes.len())));
        }
        if bytes.len() < 4 || bytes[..4] != AGENT_DESC_MAGIC {
            return Err(Error::malformed("not a kvxfer agent descriptor (bad magic)"));
        }
        // The endpoint and key blobs go to UCX's own parsers, which assert on
        // damaged input: refuse anything corrupted or cut before they see it.
        let Some(body_len) = bytes.len().checked_sub(8) else {
            return Err(Error::malformed("agent descriptor is truncated"));
        };
        let (body, sum) = bytes.split_at(body_len);
        if checksum(body) != u64::from_le_bytes(sum.try_into().unwrap()) {
            return Err(Error::malformed("agent descriptor checksum mismatch (truncated or corrupted)"));
        }
        let mut r = Reader::new(body);
        if r.take(4, "magic")? != AGENT_DESC_MAGIC {
            return Err(Error::malformed("not a kvxfer agent descriptor (bad magic)"));
        }
        let version = r.u16("version")?;
        if version != AGENT_DESC_VERSION && version != AGENT_DESC_VERSION_IPC {
            return Err(Error::malformed(format!(
                "agent descriptor version {version} is not supported (this build reads {AGENT_DESC_VERSION} and {AGENT_DESC_VERSION_IPC})"
            )));
        }
        let backend = r.u8("backend")?;
        let _reserved = r.u8("reserved")?;
        let name = r.string(MAX_NAME_LEN, "agent name")?;
        if name.is_empty() {
            return Err(Error::malformed("agent name is empty"));
        }
        let endpoint = r.blob(MAX_ENDPOINT_BLOB, "endpoint address")?.to_vec();
        let count = r.u32("region count")? as usize;
        // Each region takes at least 25 bytes: refuse counts the input cannot hold.
        if count > MAX_REGIONS || count > r.remaining() / 25 {
            return Err(Error::malformed(format!("region count {count} is impossible for this descriptor")));
        }
        let mut regions = Vec::with_capacity(count);
        for _ in 0..count {
            let addr = r.u64("region address")?;
            let len = r.u64("region length")?;
            if addr.checked_add(len).is_none() {
                return Err(Error::malformed(format!("region {addr:#x}+{len} overflows")));
            }
            let mem_type =
                kvx_memory_type::from_raw(r.u8("memory type")? as u32).map_err(|e| Error::malformed(e.message))?;
            let device_id = r.u32("device id")?;
            let key = r.blob(MAX_KEY_BLOB, "region key")?.to_vec();
            regions.push(RemoteRegion { addr, len, mem_type, device_id, key });
        }
        let ipc = if version == AGENT_DESC_VERSION_IPC { Some(decode_ipc(&mut r, regions.len())?) } else { None };
        r.finish("agent descriptor")?;
        Ok(AgentDescriptor { backend, name, endpoint, regions, ipc })
    }
}

fn decode_ipc(r: &mut Reader<'_>, region_count: usize) -> Result<IpcSection> {
    let host = r.blob(MAX_HOST_ID, "IPC host identity")?.to_vec();
    let pid = r.u32("IPC process id")?;
    let count = r.u32("IPC region count")? as usize;
    let entry = 4 + IPC_HANDLE_LEN + 8;
    if count > region_count || count > r.remaining() / entry {
        return Err(Error::malformed(format!("IPC region count {count} is impossible for this descriptor")));
    }
    let mut regions = Vec::with_capacity(count);
    for _ in 0..count {
        let region = r.u32("IPC region index")?;
        if region as usize >= region_count {
            return Err(Error::malformed(format!("IPC entry names region {region} of {region_count}")));
        }
        let handle = r.take(IPC_HANDLE_LEN, "IPC handle")?.try_into().expect("64 bytes");
        let offset = r.u64("IPC offset")?;
        regions.push(IpcRegion { region, handle, offset });
    }
    Ok(IpcSection { host, pid, regions })
}

/// FNV-1a over the descriptor body: catches truncation and corruption (not
/// an authenticity check: descriptors come from peers in the same trust domain).
pub fn checksum(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// What kvxfer appends to NIXL metadata: the agent's listener address (its
/// connection info, so a loader can see whether the agent still lives before
/// handing the metadata to NIXL), then a trailer of magic, both lengths and a
/// checksum over metadata and address. NIXL ignores bytes after its metadata,
/// so stock NIXL agents load sealed metadata unchanged.
const NIXL_TRAILER_MAGIC: &[u8; 4] = b"kvxL";
const NIXL_TRAILER_LEN: usize = 4 + 8 + 2 + 8;
/// Every NIXL metadata blob starts with this serializer header.
const NIXL_METADATA_HEADER: &[u8] = b"nixlSerDes|";

/// NIXL metadata as kvxfer received it.
#[derive(Debug, PartialEq, Eq)]
pub struct OpenedNixlMetadata<'a> {
    /// What NIXL loads.
    pub metadata: &'a [u8],
    /// The agent's listener (`ip:port`); None for stock NIXL metadata or an agent without one.
    pub listener: Option<&'a str>,
}

/// Seal `metadata` with the agent's `listener` address (empty: none). Addresses
/// longer than `u16::MAX` bytes cannot occur (`ip:port`) and are left out.
pub fn seal_nixl_metadata(mut metadata: Vec<u8>, listener: &str) -> Vec<u8> {
    let listener = if listener.len() <= u16::MAX as usize { listener.as_bytes() } else { &[] };
    let metadata_len = metadata.len() as u64;
    metadata.extend_from_slice(listener);
    let sum = checksum(&metadata);
    metadata.extend_from_slice(NIXL_TRAILER_MAGIC);
    metadata.extend_from_slice(&metadata_len.to_le_bytes());
    metadata.extend_from_slice(&(listener.len() as u16).to_le_bytes());
    metadata.extend_from_slice(&sum.to_le_bytes());
    metadata
}

/// The NIXL metadata inside `bytes`: its seal verified when kvxfer sealed
/// it, and its framing walked either way (a valid checksum or MAC does not
/// make a memory type or worker address NIXL would crash on). Metadata from
/// a stock NIXL agent (no trailer) is refused unless `accept_stock`: then the
/// framing walk is the only check before NIXL's own parser (NIXL 1.5.1 leaves
/// a peer name unloadable after some malformed blobs).
pub fn open_nixl_metadata(bytes: &[u8], accept_stock: bool) -> Result<OpenedNixlMetadata<'_>> {
    if bytes.len() >= NIXL_TRAILER_LEN {
        let (sealed, trailer) = bytes.split_at(bytes.len() - NIXL_TRAILER_LEN);
        if &trailer[..4] == NIXL_TRAILER_MAGIC {
            let mut r = Reader::new(&trailer[4..]);
            let metadata_len = r.u64("metadata length")?;
            let listener_len = r.u16("listener length")? as u64;
            let sum = r.u64("checksum")?;
            if metadata_len.checked_add(listener_len) != Some(sealed.len() as u64) || sum != checksum(sealed) {
                return Err(Error::malformed("NIXL metadata is corrupted (kvxfer checksum mismatch)"));
            }
            let (metadata, listener) = sealed.split_at(metadata_len as usize);
            let listener = std::str::from_utf8(listener)
                .map_err(|_| Error::malformed("NIXL metadata names a listener that is not text"))?;
            check_nixl_framing(metadata)?;
            return Ok(OpenedNixlMetadata { metadata, listener: (!listener.is_empty()).then_some(listener) });
        }
    }
    if !bytes.starts_with(NIXL_METADATA_HEADER) || bytes.last() != Some(&b'|') {
        return Err(Error::malformed("not NIXL metadata (bad framing)"));
    }
    if !accept_stock {
        return Err(Error::malformed(
            "NIXL metadata without kvxfer's checksum (truncated, or from a stock NIXL agent: \
             set KVX_NIXL_STOCK_PEERS=1 where peers may be stock NIXL agents)",
        ));
    }
    check_nixl_framing(bytes)?;
    Ok(OpenedNixlMetadata { metadata: bytes, listener: None })
}

/// Where NIXL metadata's first field (the agent name) lies: its length field and value.
fn nixl_name_field(metadata: &[u8]) -> Result<(usize, usize)> {
    let tag = b"Agent";
    let at = NIXL_METADATA_HEADER.len();
    let body = metadata
        .get(at..)
        .filter(|b| b.starts_with(tag))
        .ok_or_else(|| Error::malformed("NIXL metadata does not start with the agent name"))?;
    let mut r = Reader::new(&body[tag.len()..]);
    let len = r.u64("agent name length")?;
    if len as usize > MAX_NAME_LEN || len as usize >= r.remaining() || body[tag.len() + 8 + len as usize] != b'|' {
        return Err(Error::malformed("NIXL metadata: the agent name field is malformed"));
    }
    Ok((at + tag.len(), len as usize))
}

/// The agent name NIXL metadata carries.
pub fn nixl_metadata_name(metadata: &[u8]) -> Result<&str> {
    let (at, len) = nixl_name_field(metadata)?;
    std::str::from_utf8(&metadata[at + 8..at + 8 + len])
        .map_err(|_| Error::malformed("NIXL metadata: the agent name is not UTF-8"))
}

/// The same metadata naming its agent `name` (how NIXL will know it).
pub fn rename_nixl_metadata(metadata: &[u8], name: &str) -> Result<Vec<u8>> {
    let (at, len) = nixl_name_field(metadata)?;
    let mut out = Vec::with_capacity(metadata.len() + name.len());
    out.extend_from_slice(&metadata[..at]);
    out.extend_from_slice(&(name.len() as u64).to_le_bytes());
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(&metadata[at + 8 + len..]);
    Ok(out)
}

/// A packed UCX worker address starts with a header byte whose low four bits
/// are the address format version (0 and 1 exist, UCX 1.14 to 1.23), then a
/// 64-bit worker id. UCX asserts (aborting the process) on any other version,
/// so kvxfer refuses it first; the rest of the address only UCX can judge.
pub fn check_ucx_worker_address(address: &[u8]) -> Result<()> {
    const HEADER_AND_UUID: usize = 1 + 8;
    if address.len() < HEADER_AND_UUID {
        return Err(Error::malformed(format!("UCX worker address of {} bytes is too short", address.len())));
    }
    let version = address[0] & 0x0f;
    if version > 1 {
        return Err(Error::malformed(format!("UCX worker address format {version} is unknown")));
    }
    Ok(())
}

/// NIXL's memory types (`nixl_mem_t`: DRAM, VRAM, BLK, OBJ, FILE).
const NIXL_MEM_TYPES: u32 = 5;
/// Bounds no real agent reaches: a handful of plugins, a section per plugin and memory type.
const MAX_NIXL_BACKENDS: u64 = 16;
const MAX_NIXL_SECTIONS: u64 = 256;
const MAX_NIXL_PLUGIN_NAME: usize = 64;
/// A descriptor entry: address, length, device id, then the plugin's key.
const NIXL_DESC_FIXED: usize = 24;

/// Walk stock NIXL metadata (NIXL 1.5.1's serializer: `tag`, a `u64` length,
/// the value and `|`, in the order NIXL writes an agent's metadata) and refuse
/// what NIXL's loader would trust blindly: lengths past the end, unknown tags,
/// absurd counts, memory types NIXL does not know (which crash its memory
/// sections). The connection blobs and keys inside stay for NIXL's plugin to judge.
pub fn check_nixl_framing(bytes: &[u8]) -> Result<()> {
    let body =
        bytes.strip_prefix(NIXL_METADATA_HEADER).ok_or_else(|| Error::malformed("not NIXL metadata (bad framing)"))?;
    let mut r = Reader::new(body);
    let mut field = |tag: &str| -> Result<&[u8]> {
        let what = if tag.is_empty() { "NIXL metadata entry" } else { tag };
        if r.take(tag.len(), what)? != tag.as_bytes() {
            return Err(Error::malformed(format!("NIXL metadata: expected field {tag:?}")));
        }
        let len = r.u64(what)?;
        if len > r.remaining() as u64 {
            return Err(Error::malformed(format!("NIXL metadata: {what} claims {len} bytes, {} left", r.remaining())));
        }
        let value = r.take(len as usize, what)?;
        if r.u8(what)? != b'|' {
            return Err(Error::malformed(format!("NIXL metadata: {what} is not followed by '|'")));
        }
        Ok(value)
    };
    let count = |v: &[u8], what: &str, max: u64| -> Result<u64> {
        let n = u64::from_le_bytes(
            v.try_into().map_err(|_| Error::malformed(format!("NIXL metadata: {what} is not 8 bytes")))?,
        );
        if n > max {
            return Err(Error::malformed(format!("NIXL metadata: {what} {n} exceeds {max}")));
        }
        Ok(n)
    };
    let plugin = |v: &[u8]| -> Result<()> {
        if v.is_empty() || v.len() > MAX_NIXL_PLUGIN_NAME || !v.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'_')
        {
            return Err(Error::malformed("NIXL metadata: a plugin name is not a name"));
        }
        Ok(())
    };
    let name = field("Agent")?;
    if name.is_empty() || name.len() > MAX_NAME_LEN || std::str::from_utf8(name).is_err() {
        return Err(Error::malformed("NIXL metadata: the agent name is empty, too long or not UTF-8"));
    }
    let backends = count(field("Conns")?, "backend count", MAX_NIXL_BACKENDS)?;
    for _ in 0..backends {
        let name = field("t")?;
        plugin(name)?;
        let connection = field("c")?;
        if connection.len() > MAX_ENDPOINT_BLOB {
            return Err(Error::malformed("NIXL metadata: a connection blob is too large"));
        }
        // The UCX plugin's connection blob is a UCX worker address.
        if name == b"UCX" {
            check_ucx_worker_address(connection).map_err(|e| e.context("NIXL metadata"))?;
        }
    }
    if field("")? != b"MemSection" {
        return Err(Error::malformed("NIXL metadata: the memory section is missing"));
    }
    let sections = count(field("nixlSecElms")?, "section count", MAX_NIXL_SECTIONS)?;
    for _ in 0..sections {
        plugin(field("bknd")?)?;
        if field("nixlDList")? != b"nixlSDList" {
            return Err(Error::malformed("NIXL metadata: a descriptor list is malformed"));
        }
        let mem_type = field("t")?;
        let mem_type = u32::from_le_bytes(
            mem_type.try_into().map_err(|_| Error::malformed("NIXL metadata: a memory type is not 4 bytes"))?,
        );
        if mem_type >= NIXL_MEM_TYPES {
            return Err(Error::malformed(format!("NIXL metadata: memory type {mem_type} is unknown")));
        }
        let descs = count(field("n")?, "descriptor count", MAX_REGIONS as u64)?;
        for _ in 0..descs {
            let entry = field("")?;
            if entry.len() < NIXL_DESC_FIXED || entry.len() > NIXL_DESC_FIXED + MAX_KEY_BLOB {
                return Err(Error::malformed(format!("NIXL metadata: a descriptor of {} bytes", entry.len())));
            }
            let addr = u64::from_le_bytes(entry[..8].try_into().expect("8 bytes"));
            let len = u64::from_le_bytes(entry[8..16].try_into().expect("8 bytes"));
            if addr.checked_add(len).is_none() {
                return Err(Error::malformed(format!("NIXL metadata: region {addr:#x}+{len} overflows")));
            }
        }
    }
    r.finish("NIXL metadata")
}

/// True for bytes that look like NIXL metadata from a stock NIXL agent
/// (NIXL's framing, no kvxfer trailer): what `KVX_NIXL_STOCK_PEERS=1` admits
/// without authentication.
pub fn is_stock_nixl_metadata(bytes: &[u8]) -> bool {
    let sealed = bytes.len() >= NIXL_TRAILER_LEN && bytes[bytes.len() - NIXL_TRAILER_LEN..][..4] == *NIXL_TRAILER_MAGIC;
    !sealed && bytes.starts_with(NIXL_METADATA_HEADER) && bytes.last() == Some(&b'|')
}

/// Control-channel messages (TCP, one request and one reply per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Ask an agent for its descriptor; `expected_name` guards against
    /// reaching the wrong agent at a reused address.
    GetAgentDesc {
        expected_name: String,
    },
    AgentDesc {
        desc: Vec<u8>,
    },
    /// Open a connection-manager connection: the client's connection id,
    /// its endpoint address and its own listening address.
    Connect {
        client_conn_id: u64,
        endpoint: Vec<u8>,
        client_address: String,
    },
    Accept {
        server_conn_id: u64,
        endpoint: Vec<u8>,
    },
    Refused {
        reason: String,
    },
}

impl ControlMessage {
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Writer::default();
        w.raw(&CONTROL_MAGIC).u8(CONTROL_VERSION);
        match self {
            ControlMessage::GetAgentDesc { expected_name } => {
                w.u8(1).blob(expected_name.as_bytes());
            }
            ControlMessage::AgentDesc { desc } => {
                w.u8(2).blob(desc);
            }
            ControlMessage::Connect { client_conn_id, endpoint, client_address } => {
                w.u8(3).u64(*client_conn_id).blob(endpoint).blob(client_address.as_bytes());
            }
            ControlMessage::Accept { server_conn_id, endpoint } => {
                w.u8(4).u64(*server_conn_id).blob(endpoint);
            }
            ControlMessage::Refused { reason } => {
                w.u8(5).blob(reason.as_bytes());
            }
        }
        w.bytes
    }

    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes);
        if r.take(4, "control magic")? != CONTROL_MAGIC {
            return Err(Error::malformed("not a kvxfer control message (bad magic)"));
        }
        let version = r.u8("control version")?;
        if version != CONTROL_VERSION {
            return Err(Error::malformed(format!("control protocol version {version} is not supported")));
        }
        let msg = match r.u8("control message type")? {
            1 => ControlMessage::GetAgentDesc { expected_name: r.string(MAX_NAME_LEN, "agent name")? },
            2 => ControlMessage::AgentDesc { desc: r.blob(MAX_FRAME, "agent descriptor")?.to_vec() },
            3 => ControlMessage::Connect {
                client_conn_id: r.u64("connection id")?,
                endpoint: r.blob(MAX_ENDPOINT_BLOB, "endpoint address")?.to_vec(),
                client_address: r.string(MAX_NAME_LEN, "client address")?,
            },
            4 => ControlMessage::Accept {
                server_conn_id: r.u64("connection id")?,
                endpoint: r.blob(MAX_ENDPOINT_BLOB, "endpoint address")?.to_vec(),
            },
            5 => ControlMessage::Refused { reason: r.string(MAX_NAME_LEN * 4, "reason")? },
            other => return Err(Error::malformed(format!("unknown control message type {other}"))),
        };
        r.finish("control message")?;
        Ok(msg)
    }
}

/// Header of a notification (sync message) active message: who sent it.
pub fn encode_notification_header(sender: &str) -> Vec<u8> {
    let mut w = Writer::default();
    w.u8(1).blob(sender.as_bytes());
    w.bytes
}

pub fn decode_notification_header(bytes: &[u8]) -> Result<String> {
    let mut r = Reader::new(bytes);
    let version = r.u8("notification version")?;
    if version != 1 {
        return Err(Error::malformed(format!("notification version {version} is not supported")));
    }
    let sender = r.string(MAX_NAME_LEN, "sender name")?;
    r.finish("notification header")?;
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> AgentDescriptor {
        AgentDescriptor {
            backend: 1,
            name: "agent\u{1}x".into(),
            endpoint: vec![0, 1, 2, 0, 255],
            regions: vec![
                RemoteRegion {
                    addr: 4096,
                    len: 100,
                    mem_type: kvx_memory_type::KVX_MEMORY_DRAM,
                    device_id: 0,
                    key: vec![9; 40],
                },
                RemoteRegion {
                    addr: 1 << 40,
                    len: 1 << 30,
                    mem_type: kvx_memory_type::KVX_MEMORY_VRAM,
                    device_id: 3,
                    key: vec![],
                },
            ],
            ipc: None,
        }
    }

    fn sample_with_ipc() -> AgentDescriptor {
        let ipc = IpcSection {
            host: b"boot-id".to_vec(),
            pid: 77,
            regions: vec![IpcRegion { region: 1, handle: [5; IPC_HANDLE_LEN], offset: 4096 }],
        };
        AgentDescriptor { ipc: Some(ipc), ..sample() }
    }

    #[test]
    fn agent_descriptor_round_trips() {
        let d = sample();
        assert_eq!(AgentDescriptor::decode(&d.encode()).unwrap(), d);
        let bytes = d.encode();
        assert_eq!(
            u16::from_le_bytes([bytes[4], bytes[5]]),
            AGENT_DESC_VERSION,
            "host-only descriptors stay version 1"
        );
        let d = sample_with_ipc();
        assert_eq!(AgentDescriptor::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn ipc_sections_naming_missing_regions_are_refused() {
        let mut d = sample_with_ipc();
        d.ipc.as_mut().unwrap().regions[0].region = 2;
        assert!(AgentDescriptor::decode(&d.encode()).unwrap_err().message.contains("IPC entry"));
        let bytes = sample_with_ipc().encode();
        for cut in 0..bytes.len() {
            assert!(AgentDescriptor::decode(&bytes[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = sample().encode();
        for cut in 0..bytes.len() {
            let err = AgentDescriptor::decode(&bytes[..cut]).unwrap_err();
            assert_eq!(err.status, crate::core::error::kvx_status::KVX_ERR_MALFORMED, "cut {cut}");
        }
    }

    #[test]
    fn wrong_version_and_absurd_counts_are_refused() {
        let sealed = |mut w: Writer| {
            let sum = checksum(&w.bytes);
            w.u64(sum);
            w.bytes
        };
        let mut bytes = sample().encode();
        bytes[4] = 9;
        assert!(AgentDescriptor::decode(&bytes).unwrap_err().message.contains("checksum"));
        let mut w = Writer::default();
        w.raw(&AGENT_DESC_MAGIC).u16(9).u8(1).u8(0);
        assert!(AgentDescriptor::decode(&sealed(w)).unwrap_err().message.contains("version"));
        let mut w = Writer::default();
        w.raw(&AGENT_DESC_MAGIC).u16(1).u8(1).u8(0).blob(b"n").blob(b"").u32(u32::MAX);
        assert!(AgentDescriptor::decode(&sealed(w)).unwrap_err().message.contains("region count"));
        let mut w = Writer::default();
        w.raw(&AGENT_DESC_MAGIC).u16(1).u8(1).u8(0).blob(b"n").blob(b"").u32(1);
        w.u64(u64::MAX).u64(2).u8(0).u32(0).blob(b"");
        assert!(AgentDescriptor::decode(&sealed(w)).unwrap_err().message.contains("overflows"));
    }

    #[test]
    fn control_messages_round_trip() {
        for m in [
            ControlMessage::GetAgentDesc { expected_name: "a".into() },
            ControlMessage::AgentDesc { desc: vec![1, 2, 3] },
            ControlMessage::Connect { client_conn_id: 7, endpoint: vec![0; 9], client_address: "127.0.0.1:5".into() },
            ControlMessage::Accept { server_conn_id: 8, endpoint: vec![4] },
            ControlMessage::Refused { reason: "no".into() },
        ] {
            let bytes = m.encode();
            assert_eq!(ControlMessage::decode(&bytes).unwrap(), m);
            for cut in 0..bytes.len() {
                assert!(ControlMessage::decode(&bytes[..cut]).is_err());
            }
        }
    }

    #[test]
    fn notification_header_round_trips() {
        let h = encode_notification_header("agent0");
        assert_eq!(decode_notification_header(&h).unwrap(), "agent0");
        assert!(decode_notification_header(&h[..h.len() - 1]).is_err());
    }

    /// Metadata laid out as NIXL 1.5.1 writes it: one UCX backend, one DRAM section of one region.
    fn stock_metadata(mem_type: u32) -> Vec<u8> {
        let mut w = Writer::default();
        let mut field = |tag: &str, value: &[u8]| {
            w.raw(tag.as_bytes()).u64(value.len() as u64).raw(value).raw(b"|");
        };
        field("Agent", b"a");
        field("Conns", &1u64.to_le_bytes());
        field("t", b"UCX");
        field("c", &[0x20, 0x7f, 0x68, 0xee, 0x81, 0x43, 0x2b, 0x55, 0x16, 0x00]);
        field("", b"MemSection");
        field("nixlSecElms", &1u64.to_le_bytes());
        field("bknd", b"UCX");
        field("nixlDList", b"nixlSDList");
        field("t", &mem_type.to_le_bytes());
        field("n", &1u64.to_le_bytes());
        let mut entry = Writer::default();
        entry.u64(0x7fab_4410_8ba0).u64(4096).u64(0).raw(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff]);
        field("", &entry.bytes);
        [NIXL_METADATA_HEADER, &w.bytes].concat()
    }

    #[test]
    fn stock_nixl_framing_is_walked_before_nixl_sees_it() {
        let md = stock_metadata(0);
        assert!(check_nixl_framing(&md).is_ok());
        assert!(check_nixl_framing(&stock_metadata(4)).is_ok(), "FILE is a NIXL memory type");
        let e = check_nixl_framing(&stock_metadata(5)).unwrap_err();
        assert!(e.message.contains("memory type 5"), "{e}");
        for cut in 0..md.len() {
            assert!(check_nixl_framing(&md[..cut]).is_err(), "cut at {cut}");
        }
        let mut longer = md.clone();
        longer.push(0);
        assert!(check_nixl_framing(&longer).is_err(), "trailing bytes");
        // Every flipped byte outside the transport's own blobs is refused.
        let transport_blob = md.windows(4).position(|w| w == [0x20, 0x7f, 0x68, 0xee]).unwrap();
        let mut bad = md.clone();
        bad[transport_blob] = 0x2f;
        assert!(check_nixl_framing(&bad).unwrap_err().message.contains("address format 15"));
        let entry = md.len() - 36;
        let mut passed = Vec::new();
        for i in 0..md.len() {
            let mut bad = md.clone();
            bad[i] ^= 0x80;
            if check_nixl_framing(&bad).is_ok() {
                passed.push(i);
            }
        }
        // 0x20 ^ 0x80 keeps the address version; the rest of the address is UCX's to judge.
        let judged_by_nixl: Vec<usize> = (transport_blob..transport_blob + 10).chain(entry..entry + 35).collect();
        assert!(passed.iter().all(|i| judged_by_nixl.contains(i)), "passed {passed:?}");
        // The memory type field, byte by byte.
        let t = md.windows(5).rposition(|w| w == b"t\x04\0\0\0").unwrap() + 9;
        for v in [5u8, 0x80, 0xff] {
            let mut bad = md.clone();
            bad[t] = v;
            assert!(check_nixl_framing(&bad).is_err(), "memory type {v}");
        }
    }

    #[test]
    fn nixl_metadata_names_are_read_and_replaced() {
        let md = stock_metadata(1);
        assert_eq!(nixl_metadata_name(&md).unwrap(), "a");
        let renamed = rename_nixl_metadata(&md, "a#kvxfer-load-1").unwrap();
        assert_eq!(nixl_metadata_name(&renamed).unwrap(), "a#kvxfer-load-1");
        assert!(check_nixl_framing(&renamed).is_ok(), "only the name changed");
        assert_eq!(rename_nixl_metadata(&renamed, "a").unwrap(), md);
        for cut in 0..NIXL_METADATA_HEADER.len() + 15 {
            assert!(nixl_metadata_name(&md[..cut]).is_err(), "cut at {cut}");
        }
    }

    #[test]
    fn nixl_metadata_seal_round_trips_and_catches_damage() {
        let md = stock_metadata(0);
        for listener in ["10.0.0.7:4242", ""] {
            let sealed = seal_nixl_metadata(md.clone(), listener);
            let opened = open_nixl_metadata(&sealed, false).unwrap();
            assert_eq!(
                opened,
                OpenedNixlMetadata { metadata: &md[..], listener: (!listener.is_empty()).then_some(listener) }
            );
            for i in 0..sealed.len() {
                let mut bad = sealed.clone();
                bad[i] ^= 0x20;
                assert!(open_nixl_metadata(&bad, true).is_err(), "flip at {i}");
            }
        }
        let stock = open_nixl_metadata(&md, true).unwrap();
        assert_eq!(
            stock,
            OpenedNixlMetadata { metadata: &md[..], listener: None },
            "stock NIXL metadata passes when allowed"
        );
        assert!(open_nixl_metadata(&md, false).is_err(), "and only then");
        for cut in 0..md.len() {
            assert!(open_nixl_metadata(&md[..cut], true).is_err(), "cut at {cut}");
        }
        assert!(open_nixl_metadata(b"", true).is_err());
    }

    #[test]
    fn sealed_nixl_metadata_is_walked_too() {
        // A valid seal (or a MAC around it) vouches for the sender, not for
        // what NIXL will do with the fields.
        let e = open_nixl_metadata(&seal_nixl_metadata(stock_metadata(5), ""), false).unwrap_err();
        assert!(e.message.contains("memory type 5"), "{e}");
        let mut md = stock_metadata(0);
        let address = md.windows(2).position(|w| w == [0x20, 0x7f]).unwrap();
        md[address] = 0x27; // address format 7: UCX asserts on it
        let e = open_nixl_metadata(&seal_nixl_metadata(md, ""), false).unwrap_err();
        assert!(e.message.contains("address format 7"), "{e}");
    }
}
