//! Connection-info strings (`ip:port`, `[ipv6]:port`) come from peers and
//! configuration: parsing must never panic, and what parses must print back
//! to something that parses to the same address. Listen addresses too.
#![no_main]
use kvxfer::core::net::{choose_listen_ip, format_connection_info, parse_connection_info};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(addr) = parse_connection_info(text) {
        let printed = format_connection_info(&addr);
        assert_eq!(parse_connection_info(&printed).unwrap(), addr, "{text:?} -> {printed:?}");
    }
    // An explicit listen IP is parsed, never resolved (empty means "not given").
    if text.is_empty() {
        return;
    }
    if let Ok(ip) = choose_listen_ip(Some(text), "KVX_FUZZ_NO_SUCH_VAR") {
        assert_eq!(text.parse::<std::net::IpAddr>().unwrap(), ip);
    }
});
