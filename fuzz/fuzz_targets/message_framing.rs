//! Notification headers and control-channel messages, both read from peers:
//! decoding must never panic, and what decodes must round-trip.
#![no_main]
use kvxfer::core::wire::{decode_notification_header, encode_notification_header, ControlMessage};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(sender) = decode_notification_header(data) {
        assert_eq!(encode_notification_header(&sender), data);
    }
    if let Ok(message) = ControlMessage::decode(data) {
        assert_eq!(message.encode(), data);
    }
});
