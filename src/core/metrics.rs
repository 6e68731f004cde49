//! The Prometheus endpoint: `KVX_METRICS_ADDR=ip:port` makes the process
//! serve every live agent's and connection manager's counters and histograms
//! (`core::stats`) at `GET /metrics` in Prometheus text format 0.0.4, encoded
//! by the `prometheus-client` crate, and the same as JSON at `GET /stats`.
//! Off by default; one endpoint per process, started by the first agent or
//! manager. Values are read from the counters at scrape time, so serving
//! costs the transfer path nothing.

use super::stats::{Counters, Histogram, Scope, SIZE_CLASSES};
use once_cell::sync::OnceCell;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// The address the endpoint listens on, once it was started.
static ENDPOINT: OnceCell<Option<SocketAddr>> = OnceCell::new();

/// Start the endpoint if `KVX_METRICS_ADDR` names one (once per process). A
/// bad or busy address is logged and leaves the process without an endpoint.
pub fn start_from_environment() {
    ENDPOINT.get_or_init(|| {
        let addr = std::env::var("KVX_METRICS_ADDR").ok().filter(|a| !a.is_empty())?;
        match serve(&addr) {
            Ok(bound) => {
                crate::log_at!(Info, "metrics: serving http://{bound}/metrics");
                Some(bound)
            }
            Err(e) => {
                crate::log_at!(Error, "metrics: KVX_METRICS_ADDR={addr:?} not served: {e}");
                None
            }
        }
    });
}

/// Where the endpoint listens (None: off, or not started yet).
pub fn endpoint() -> Option<SocketAddr> {
    ENDPOINT.get().copied().flatten()
}

fn serve(addr: &str) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr)?;
    let bound = listener.local_addr()?;
    std::thread::Builder::new().name("kvx-metrics".into()).spawn(move || {
        for stream in listener.incoming().flatten() {
            // One scrape at a time, each bounded by its timeouts: a stuck client delays, never blocks.
            let _ = answer(stream);
        }
    })?;
    Ok(bound)
}

/// Largest request head read; a scrape request is a few hundred bytes.
const MAX_REQUEST: usize = 8 << 10;

fn answer(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(2)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && !head.windows(2).any(|w| w == b"\n\n") {
        let n = stream.read(&mut chunk)?;
        if n == 0 || head.len() + n > MAX_REQUEST {
            break;
        }
        head.extend_from_slice(&chunk[..n]);
    }
    let line = String::from_utf8_lossy(head.split(|&b| b == b'\n').next().unwrap_or_default()).into_owned();
    let mut parts = line.split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, content_type, body) = match (method, path) {
        ("GET", "/metrics") | ("GET", "/") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", prometheus_text()),
        ("GET", "/stats") => ("200 OK", "application/json", super::stats::process_snapshot().to_string()),
        ("GET", _) => ("404 Not Found", "text/plain", "try /metrics or /stats\n".to_owned()),
        _ => ("405 Method Not Allowed", "text/plain", "GET only\n".to_owned()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes())
}

/// Every live scope's metrics in Prometheus text format.
pub fn prometheus_text() -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(ScopesCollector));
    let mut out = String::new();
    if let Err(e) = prometheus_client::encoding::prometheus_text::encode(&mut out, &registry) {
        crate::log_at!(Error, "metrics: encoding failed: {e}");
    }
    out
}

#[derive(Debug)]
struct ScopesCollector;

type Labels = Vec<(&'static str, String)>;

fn scope_labels(scope: &Scope) -> Labels {
    vec![("kind", scope.kind.name().to_owned()), ("name", scope.name()), ("backend", scope.backend.to_owned())]
}

fn with(mut labels: Labels, more: &[(&'static str, &str)]) -> Labels {
    labels.extend(more.iter().map(|(k, v)| (*k, v.to_string())));
    labels
}

/// One metric family: its series as (labels, value).
fn family<V: Copy>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric_type: MetricType,
    series: &[(Labels, V)],
    mut write: impl FnMut(&mut prometheus_client::encoding::MetricEncoder, V) -> Result<(), std::fmt::Error>,
) -> Result<(), std::fmt::Error> {
    if series.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, metric_type)?;
    for (labels, value) in series {
        let mut one = metric.encode_family(labels)?;
        write(&mut one, *value)?;
    }
    Ok(())
}

fn counters(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, u64)],
) -> Result<(), std::fmt::Error> {
    family(e, name, help, MetricType::Counter, series, |m, v| m.encode_counter::<NoLabelSet, u64, f64>(&v, None))
}

fn gauges(e: &mut DescriptorEncoder, name: &str, help: &str, series: &[(Labels, i64)]) -> Result<(), std::fmt::Error> {
    family(e, name, help, MetricType::Gauge, series, |m, v| m.encode_gauge(&v))
}

fn histograms(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: &[(Labels, &Histogram)],
) -> Result<(), std::fmt::Error> {
    family(e, name, help, MetricType::Histogram, series, |m, h| {
        let (sum, count, buckets) = h.read();
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    })
}

/// The counter families kept for scopes and peers alike: (name, help, read).
type ReadCounters = fn(&Counters) -> Vec<(Vec<(&'static str, &'static str)>, u64)>;

fn load(v: &AtomicU64) -> u64 {
    v.load(Relaxed)
}

fn gauge(v: &AtomicI64) -> i64 {
    v.load(Relaxed).max(0)
}

const COUNTER_FAMILIES: [(&str, &str, ReadCounters); 12] = [
    ("transfers_started", "Transfers posted.", |c| vec![(vec![], load(&c.transfers_started))]),
    ("transfers_completed", "Transfers completed successfully.", |c| vec![(vec![], load(&c.transfers_completed))]),
    ("transfers_failed", "Transfers that failed, by status.", |c| {
        Counters::failures(&c.transfers_failed).into_iter().map(|(s, n)| (vec![("status", s)], n)).collect()
    }),
    ("submits_refused", "Submissions refused before posting, by status.", |c| {
        Counters::failures(&c.submits_refused).into_iter().map(|(s, n)| (vec![("status", s)], n)).collect()
    }),
    ("transfer_bytes", "Bytes of completed transfers: write = local to peer, read = peer to local.", |c| {
        vec![(vec![("direction", "write")], load(&c.bytes_written)), (vec![("direction", "read")], load(&c.bytes_read))]
    }),
    ("notifications", "Notifications (sync messages) sent and received.", |c| {
        vec![
            (vec![("direction", "sent")], load(&c.notifications_sent)),
            (vec![("direction", "received")], load(&c.notifications_received)),
        ]
    }),
    ("messages", "Connection-manager messages sent and received.", |c| {
        vec![
            (vec![("direction", "sent")], load(&c.messages_sent)),
            (vec![("direction", "received")], load(&c.messages_received)),
        ]
    }),
    ("message_bytes", "Connection-manager message bytes sent and received.", |c| {
        vec![
            (vec![("direction", "sent")], load(&c.message_bytes_sent)),
            (vec![("direction", "received")], load(&c.message_bytes_received)),
        ]
    }),
    ("message_failures", "Connection-manager sends and receives that failed, by status.", |c| {
        Counters::failures(&c.message_failures).into_iter().map(|(s, n)| (vec![("status", s)], n)).collect()
    }),
    ("connection_setups", "Peers loaded or connections made, with their setup completed.", |c| {
        vec![(vec![], load(&c.connection_setups))]
    }),
    ("connection_setup_failures", "Peer loads or connections that failed.", |c| {
        vec![(vec![], load(&c.connection_setup_failures))]
    }),
    ("peer_events", "Peers loaded, invalidated and failed.", |c| {
        vec![
            (vec![("event", "loaded")], load(&c.peers_loaded)),
            (vec![("event", "invalidated")], load(&c.peers_invalidated)),
            (vec![("event", "failed")], load(&c.peers_failed)),
        ]
    }),
];

impl Collector for ScopesCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let scopes = Scope::all();
        let peers: Vec<_> = scopes.iter().map(|s| (scope_labels(s), s.peers())).collect();
        for (name, help, read) in COUNTER_FAMILIES {
            let per_scope: Vec<(Labels, u64)> = scopes
                .iter()
                .flat_map(|s| read(&s.counters).into_iter().map(|(extra, v)| (with(scope_labels(s), &extra), v)))
                .collect();
            counters(&mut e, &format!("kvx_{name}"), help, &per_scope)?;
            if name == "peer_events" {
                continue; // already per peer by nature; the JSON snapshot has them per peer
            }
            let per_peer: Vec<(Labels, u64)> = peers
                .iter()
                .flat_map(|(labels, list)| {
                    list.iter().flat_map(move |p| {
                        read(&p.counters)
                            .into_iter()
                            .map(move |(extra, v)| (with(with(labels.clone(), &[("peer", &p.name)]), &extra), v))
                    })
                })
                .collect();
            counters(&mut e, &format!("kvx_peer_{name}"), &format!("{help} Per peer."), &per_peer)?;
        }
        let inflight: Vec<(Labels, i64)> =
            scopes.iter().map(|s| (scope_labels(s), gauge(&s.counters.inflight))).collect();
        gauges(&mut e, "kvx_transfers_in_flight", "Transfers posted and not yet ended.", &inflight)?;
        let peer_inflight: Vec<(Labels, i64)> = peers
            .iter()
            .flat_map(|(l, list)| {
                list.iter().map(move |p| (with(l.clone(), &[("peer", &p.name)]), gauge(&p.counters.inflight)))
            })
            .collect();
        gauges(
            &mut e,
            "kvx_peer_transfers_in_flight",
            "Transfers posted and not yet ended. Per peer.",
            &peer_inflight,
        )?;
        let transports: Vec<(Labels, i64)> = peers
            .iter()
            .flat_map(|(l, list)| {
                list.iter()
                    .filter(|p| !p.transport().is_empty())
                    .map(move |p| (with(l.clone(), &[("peer", &p.name), ("transport", &p.transport())]), 1))
            })
            .collect();
        gauges(&mut e, "kvx_peer_transport", "The transport the backend chose for a peer (value 1).", &transports)?;
        let latency: Vec<(Labels, &Histogram)> = scopes
            .iter()
            .flat_map(|s| {
                SIZE_CLASSES
                    .iter()
                    .zip(&s.latency)
                    .map(|((class, _), h)| (with(scope_labels(s), &[("size_class", class)]), h))
            })
            .collect();
        histograms(
            &mut e,
            "kvx_transfer_duration_seconds",
            "Time from posting to completion of successful transfers, by request size class (upper bound).",
            &latency,
        )?;
        let setup: Vec<(Labels, &Histogram)> = scopes.iter().map(|s| (scope_labels(s), &s.connection_setup)).collect();
        histograms(&mut e, "kvx_connection_setup_duration_seconds", "Time to load a peer or make a connection.", &setup)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::stats::ScopeKind;

    #[test]
    fn hostile_names_stay_inside_their_label() {
        // A manager's peers are named by the address they announce: any bytes.
        let scope = Scope::new(ScopeKind::ConnectionManager, "UCX", "m\"1\nkvx_fake_total 9");
        let peer = scope.peer("p\\\"}\n# TYPE x counter");
        peer.message(true, 10, &Ok(()));
        let text = prometheus_text();
        assert!(!text.lines().any(|l| l.starts_with("kvx_fake_total") || l.starts_with("# TYPE x")), "{text}");
        // Escaped as the text format wants (backslash, quote, newline), inside one line.
        let line = text
            .lines()
            .find(|l| {
                l.starts_with("kvx_peer_messages_total{") && l.contains("direction=\"sent\"") && l.contains("m\\\"1")
            })
            .unwrap_or_else(|| panic!("{text}"));
        assert!(line.contains(r#"name="m\"1\nkvx_fake_total 9""#), "{line}");
        assert!(line.contains(r#"peer="p\\\"}\n# TYPE x counter""#), "{line}");
        assert!(line.ends_with(" 1"), "{line}");
    }
}
