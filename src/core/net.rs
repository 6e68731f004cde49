//! Addresses: parsing `ip:port` connection info (IPv6 as `[addr]:port`, as
//! TensorRT-LLM writes it) and choosing the address a listener advertises.

use super::error::{Error, Result};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};

/// Parse connection info such as `127.0.0.1:5000` or `[::1]:5000`.
pub fn parse_connection_info(text: &str) -> Result<SocketAddr> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Error::invalid("connection info is empty (the peer has no listener?)"));
    }
    trimmed
        .parse::<SocketAddr>()
        .map_err(|_| Error::invalid(format!("connection info {trimmed:?} is not \"ip:port\" or \"[ipv6]:port\"")))
}

/// Format an address the way TensorRT-LLM does (`ip:port`, IPv6 bracketed).
pub fn format_connection_info(addr: &SocketAddr) -> String {
    addr.to_string()
}

/// The IP a listener binds and advertises: the caller's choice, else
/// `KVX_LISTEN_IP`, else the address of interface `interface_var` (for
/// example `TRTLLM_UCX_INTERFACE`), else the address that routes outward,
/// else loopback.
pub fn choose_listen_ip(explicit: Option<&str>, interface_var: &str) -> Result<IpAddr> {
    if let Some(ip) = explicit.filter(|s| !s.is_empty()) {
        return ip.parse().map_err(|_| Error::invalid(format!("listen address {ip:?} is not an IP address")));
    }
    if let Ok(ip) = std::env::var("KVX_LISTEN_IP") {
        if !ip.is_empty() {
            return ip.parse().map_err(|_| Error::invalid(format!("KVX_LISTEN_IP={ip:?} is not an IP address")));
        }
    }
    if let Ok(ifname) = std::env::var(interface_var) {
        if !ifname.is_empty() {
            return interface_ip(&ifname).ok_or_else(|| {
                Error::invalid(format!("{interface_var}={ifname:?}: no such interface with an IP address"))
            });
        }
    }
    // Connecting a UDP socket sends nothing; it only asks the kernel for the outward source address.
    let outward = UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("8.8.8.8:53").and_then(|_| s.local_addr()))
        .map(|a| a.ip())
        .ok()
        .filter(|ip| !ip.is_unspecified());
    Ok(outward.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST)))
}

/// Which peer addresses a control listener serves: `KVX_ALLOWED_PEERS`, a
/// list of CIDRs or plain addresses separated by commas or spaces
/// (`10.0.0.0/8, ::1`). Unset or empty: every address.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedPeers {
    /// None: everyone. Each entry is a network address and its prefix length.
    networks: Option<Vec<(IpAddr, u8)>>,
}

impl AllowedPeers {
    pub fn from_env() -> Result<AllowedPeers> {
        match std::env::var("KVX_ALLOWED_PEERS") {
            Ok(text) if !text.trim().is_empty() => {
                AllowedPeers::parse(&text).map_err(|e| e.context("KVX_ALLOWED_PEERS"))
            }
            _ => Ok(AllowedPeers::default()),
        }
    }

    pub fn parse(text: &str) -> Result<AllowedPeers> {
        let mut networks = Vec::new();
        for item in text.split(|c: char| c == ',' || c.is_whitespace()).filter(|s| !s.is_empty()) {
            let (ip, prefix) = match item.split_once('/') {
                Some((ip, prefix)) => (ip, Some(prefix)),
                None => (item, None),
            };
            let ip: IpAddr =
                ip.parse().map_err(|_| Error::invalid(format!("{item:?} is not an IP address or CIDR")))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let prefix = match prefix {
                None => max,
                Some(p) => p
                    .parse::<u8>()
                    .ok()
                    .filter(|&p| p <= max)
                    .ok_or_else(|| Error::invalid(format!("{item:?}: prefix length must be 0..={max}")))?,
            };
            networks.push((ip, prefix));
        }
        if networks.is_empty() {
            return Err(Error::invalid(format!("{text:?} names no address")));
        }
        Ok(AllowedPeers { networks: Some(networks) })
    }

    pub fn is_restricted(&self) -> bool {
        self.networks.is_some()
    }

    pub fn allows(&self, ip: IpAddr) -> bool {
        let Some(networks) = &self.networks else { return true };
        // An IPv4 client of a dual-stack listener shows up as ::ffff:a.b.c.d.
        let ip = ip.to_canonical();
        networks.iter().any(|&(net, prefix)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                masked(u32::from(n) as u128, 32, prefix) == masked(u32::from(a) as u128, 32, prefix)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => masked(u128::from(n), 128, prefix) == masked(u128::from(a), 128, prefix),
            _ => false,
        })
    }
}

fn masked(bits: u128, width: u32, prefix: u8) -> u128 {
    let host_bits = width - prefix as u32;
    if host_bits >= 128 {
        0
    } else {
        bits >> host_bits
    }
}

/// One IP address the system lists: its interface's name and flags.
struct InterfaceAddress {
    name: String,
    flags: u32,
    ip: IpAddr,
}

/// Every IPv4 and IPv6 address of every interface, in the order the system lists them.
fn interface_addresses() -> Vec<InterfaceAddress> {
    let mut out = Vec::new();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut list) != 0 {
            return out;
        }
        let mut cur = list;
        while !cur.is_null() {
            let ifa = &*cur;
            cur = ifa.ifa_next;
            if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
                continue;
            }
            let ip = match (*ifa.ifa_addr).sa_family as i32 {
                libc::AF_INET => {
                    let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                    IpAddr::from(u32::from_be(sin.sin_addr.s_addr).to_be_bytes())
                }
                libc::AF_INET6 => IpAddr::from((*(ifa.ifa_addr as *const libc::sockaddr_in6)).sin6_addr.s6_addr),
                _ => continue,
            };
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name).to_string_lossy().into_owned();
            out.push(InterfaceAddress { name, flags: ifa.ifa_flags, ip });
        }
        libc::freeifaddrs(list);
    }
    out
}

/// Names of the interfaces that are up and have an IP address, in the order
/// the system lists them; loopback ones only when `loopback` is true.
pub fn addressed_interfaces(loopback: bool) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for a in interface_addresses() {
        let up = a.flags & libc::IFF_UP as u32 != 0;
        let is_loopback = a.flags & libc::IFF_LOOPBACK as u32 != 0;
        if up && (loopback || !is_loopback) && !names.contains(&a.name) {
            names.push(a.name);
        }
    }
    names
}

/// First IPv4 (else IPv6) address of a network interface.
pub fn interface_ip(name: &str) -> Option<IpAddr> {
    let mine: Vec<IpAddr> = interface_addresses().into_iter().filter(|a| a.name == name).map(|a| a.ip).collect();
    mine.iter().find(|ip| ip.is_ipv4()).or(mine.first()).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg_attr(miri, ignore = "getifaddrs is outside Miri")]
    fn addressed_interfaces_leave_out_loopback_unless_asked() {
        let with = addressed_interfaces(true);
        let without = addressed_interfaces(false);
        assert!(with.iter().any(|n| interface_ip(n).is_some_and(|ip| ip.is_loopback())), "{with:?}");
        assert!(without.iter().all(|n| interface_ip(n).is_some_and(|ip| !ip.is_loopback())), "{without:?}");
        assert!(without.iter().all(|n| with.contains(n)));
    }

    #[test]
    fn parses_v4_and_bracketed_v6() {
        assert_eq!(parse_connection_info("127.0.0.1:80").unwrap().port(), 80);
        assert!(parse_connection_info("[::1]:9").unwrap().is_ipv6());
        for bad in ["", "127.0.0.1", "::1:9", "host:1", "1.2.3.4:99999", "[::1]"] {
            assert!(parse_connection_info(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allowed_peers_match_cidrs_and_plain_addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let any = AllowedPeers::default();
        assert!(any.allows(ip("203.0.113.9")) && !any.is_restricted());
        let list = AllowedPeers::parse("10.1.0.0/16, 127.0.0.1 fd00::/8").unwrap();
        for ok in ["10.1.2.3", "10.1.255.255", "127.0.0.1", "::ffff:127.0.0.1", "fd12::1"] {
            assert!(list.allows(ip(ok)), "{ok}");
        }
        for no in ["10.2.0.1", "127.0.0.2", "::1", "fe80::1", "192.168.0.1"] {
            assert!(!list.allows(ip(no)), "{no}");
        }
        assert!(AllowedPeers::parse("0.0.0.0/0").unwrap().allows(ip("8.8.8.8")));
        assert!(AllowedPeers::parse("::/0").unwrap().allows(ip("::1")));
        for bad in ["10.0.0.0/33", "host", "10.0.0.0/", "::/129", " , "] {
            assert!(AllowedPeers::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn loopback_interface_has_an_address() {
        assert_eq!(interface_ip("lo"), Some(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(interface_ip("no-such-if0"), None);
    }
}
