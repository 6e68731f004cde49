//! Agent descriptors arrive from peers: decoding must never panic, and what
//! decodes must re-encode to the same bytes. The checksum would stop almost
//! every mutation at the door, so each input is also tried sealed with a
//! valid checksum, which lets the fuzzer reach the field parsers behind it.
//! The same holds for NIXL metadata as kvxfer seals it (UCX and NIXL
//! descriptors respectively).
#![no_main]
use kvxfer::core::error::kvx_status;
use kvxfer::core::wire::{check_nixl_framing, checksum, open_nixl_metadata, seal_nixl_metadata, AgentDescriptor};
use libfuzzer_sys::fuzz_target;

fn check(bytes: &[u8]) {
    match AgentDescriptor::decode(bytes) {
        Ok(desc) => {
            // Byte equality does not hold: the reserved byte is ignored and written as 0.
            assert_eq!(AgentDescriptor::decode(&desc.encode()).unwrap(), desc, "decode/encode is not a round trip");
            assert!(!desc.name.is_empty());
            for r in &desc.regions {
                assert!(r.addr.checked_add(r.len).is_some());
            }
        }
        Err(e) => assert_eq!(e.status, kvx_status::KVX_ERR_MALFORMED, "{e}"),
    }
}

fn check_nixl(bytes: &[u8]) {
    match open_nixl_metadata(bytes, true) {
        // What opened as sealed re-seals to the same bytes; stock metadata comes back whole.
        Ok(opened) if opened.metadata.len() != bytes.len() => {
            assert_eq!(
                seal_nixl_metadata(opened.metadata.to_vec(), opened.listener.unwrap_or("")),
                bytes,
                "seal/open is not a round trip"
            );
        }
        Ok(opened) => assert!(opened.listener.is_none()),
        Err(e) => assert_eq!(e.status, kvx_status::KVX_ERR_MALFORMED, "{e}"),
    }
}

fuzz_target!(|data: &[u8]| {
    check(data);
    check_nixl(data);
    let (metadata, listener) = data.split_at(data.len() / 2);
    let listener = String::from_utf8_lossy(listener);
    let sealed = seal_nixl_metadata(metadata.to_vec(), &listener);
    // What kvxfer seals opens again, when its framing is NIXL's.
    match open_nixl_metadata(&sealed, false) {
        Ok(opened) => {
            assert_eq!(opened.metadata, metadata);
            let expected = if listener.len() <= u16::MAX as usize { &listener[..] } else { "" };
            assert_eq!(opened.listener.unwrap_or(""), expected);
        }
        Err(e) => assert!(check_nixl_framing(metadata).is_err(), "sealed well-framed metadata did not open: {e}"),
    }
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&checksum(data).to_le_bytes());
    check(&sealed);
});
