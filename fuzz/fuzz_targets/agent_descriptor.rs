//! Agent descriptors arrive from peers: decoding must never panic, and what
//! decodes must re-encode to the same bytes. The checksum would stop almost
//! every mutation at the door, so each input is also tried sealed with a
//! valid checksum, which lets the fuzzer reach the field parsers behind it.
#![no_main]
use kvxfer::core::error::kvx_status;
use kvxfer::core::wire::{checksum, AgentDescriptor};
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

fuzz_target!(|data: &[u8]| {
    check(data);
    let mut sealed = data.to_vec();
    sealed.extend_from_slice(&checksum(data).to_le_bytes());
    check(&sealed);
});
