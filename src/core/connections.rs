//! What every connection manager shares: the cache that gives one connection
//! per peer address, and the listener side of the connection handshake.

use super::error::{kvx_status, Error, Result};
use super::wire::ControlMessage;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Connections by peer address; the same peer always yields the same connection.
pub struct ConnectionCache<C> {
    by_peer: Mutex<HashMap<String, Arc<C>>>,
    /// One batch of connects at a time, so concurrent callers for one peer share a connection.
    connect_lock: Mutex<()>,
}

impl<C> Default for ConnectionCache<C> {
    fn default() -> Self {
        ConnectionCache { by_peer: Mutex::new(HashMap::new()), connect_lock: Mutex::new(()) }
    }
}

/// Handshakes a batch runs at once: a batch to hundreds of peers costs about
/// one handshake per this many peers, and a slow peer holds up only its own.
pub const PARALLEL_CONNECTS: usize = 16;

impl<C: Send + Sync> ConnectionCache<C> {
    /// The connection to each address, connecting with `connect` where none is
    /// cached (up to `PARALLEL_CONNECTS` at once). On failure the first error in
    /// address order is returned; connections made meanwhile stay cached.
    pub fn get_or_connect(
        &self,
        addresses: &[&str],
        connect: impl Fn(&str) -> Result<Arc<C>> + Sync,
    ) -> Result<Vec<*const C>> {
        if let Some(all) = self.cached(addresses) {
            return Ok(all);
        }
        let _serial = self.connect_lock.lock();
        let mut missing: Vec<&str> = {
            let by_peer = self.by_peer.lock();
            addresses.iter().copied().filter(|a| !by_peer.contains_key(*a)).collect()
        };
        missing.sort_unstable();
        missing.dedup();
        let results = connect_all(&missing, &connect);
        let mut first_error = None;
        {
            let mut by_peer = self.by_peer.lock();
            for (address, result) in missing.iter().zip(results) {
                match result {
                    Ok(conn) => {
                        by_peer.entry((*address).to_owned()).or_insert(conn);
                    }
                    Err(e) => {
                        let at = addresses.iter().position(|a| a == address).unwrap_or(usize::MAX);
                        if first_error.as_ref().map_or(true, |(i, _)| at < *i) {
                            first_error = Some((at, e));
                        }
                    }
                }
            }
        }
        if let Some((_, e)) = first_error {
            return Err(e);
        }
        self.cached(addresses).ok_or_else(|| Error::new(kvx_status::KVX_ERR_INTERNAL, "connection vanished"))
    }

    /// Every address's connection, if all are cached.
    fn cached(&self, addresses: &[&str]) -> Option<Vec<*const C>> {
        let by_peer = self.by_peer.lock();
        addresses.iter().map(|a| by_peer.get(*a).map(Arc::as_ptr)).collect()
    }
}

impl<C> ConnectionCache<C> {
    /// Cache a connection a peer opened to us, unless one to that address exists.
    pub fn insert_accepted(&self, address: String, conn: Arc<C>) {
        self.by_peer.lock().entry(address).or_insert(conn);
    }

    pub fn clear(&self) {
        self.by_peer.lock().clear();
    }
}

/// `connect` to every address, `PARALLEL_CONNECTS` at a time; results in address order.
fn connect_all<C: Send + Sync>(
    addresses: &[&str],
    connect: &(impl Fn(&str) -> Result<Arc<C>> + Sync),
) -> Vec<Result<Arc<C>>> {
    if addresses.len() <= 1 {
        return addresses.iter().map(|a| connect(a)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<Mutex<Option<Result<Arc<C>>>>> = addresses.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_CONNECTS.min(addresses.len()) {
            let spawned = std::thread::Builder::new().name("kvx-connect".into()).spawn_scoped(scope, || loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(address) = addresses.get(i) else { break };
                *slots[i].lock() = Some(connect(address));
            });
            if spawned.is_err() {
                break; // the threads already running (or the loop below) take the rest
            }
        }
    });
    // Whatever no thread reached (none could be started) is connected here.
    slots
        .into_iter()
        .zip(addresses)
        .map(|(slot, address)| slot.into_inner().unwrap_or_else(|| connect(address)))
        .collect()
}

/// Answer a control request on a connection manager's listener: a `Connect`
/// goes to `accept(peer connection id, peer endpoint, peer address)`, which
/// returns our connection id and endpoint; anything else is refused.
pub fn answer_connect(
    request: ControlMessage,
    running: bool,
    accept: impl FnOnce(u32, &[u8], String) -> Result<(u32, Vec<u8>)>,
) -> ControlMessage {
    if !running {
        return ControlMessage::Refused { reason: "connection manager was shut down".into() };
    }
    match request {
        ControlMessage::Connect { client_conn_id, endpoint, client_address } => {
            let Ok(peer_id) = u32::try_from(client_conn_id) else {
                return ControlMessage::Refused { reason: "connection id out of range".into() };
            };
            match accept(peer_id, &endpoint, client_address) {
                Ok((local_id, endpoint)) => ControlMessage::Accept { server_conn_id: local_id as u64, endpoint },
                Err(e) => ControlMessage::Refused { reason: e.to_string() },
            }
        }
        _ => ControlMessage::Refused { reason: "unexpected request for a connection manager".into() },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::{Duration, Instant};

    #[test]
    fn connects_run_side_by_side_and_come_back_in_order() {
        let cache = ConnectionCache::<String>::default();
        let addresses: Vec<String> = (0..4 * PARALLEL_CONNECTS).map(|i| format!("peer-{i}")).collect();
        let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
        let (running, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let started = Instant::now();
        let got = cache
            .get_or_connect(&refs, |a| {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
                Ok(Arc::new(a.to_owned()))
            })
            .unwrap();
        for (p, a) in got.iter().zip(&addresses) {
            assert_eq!(unsafe { &**p }, a);
        }
        assert_eq!(most.load(Ordering::SeqCst), PARALLEL_CONNECTS);
        assert!(started.elapsed() < Duration::from_millis(20 * addresses.len() as u64 / 2));
        // Cached now: no connect at all, the same connections.
        let again = cache.get_or_connect(&refs, |_| panic!("connected twice")).unwrap();
        assert_eq!(again, got);
    }

    #[test]
    fn the_first_failure_in_address_order_is_reported_and_the_rest_stay_cached() {
        let cache = ConnectionCache::<String>::default();
        let refs = ["a", "b", "c", "d"];
        let err = cache
            .get_or_connect(&refs, |a| match a {
                "b" | "d" => Err(Error::peer(format!("{a} is down"))),
                _ => Ok(Arc::new(a.to_owned())),
            })
            .unwrap_err();
        assert!(err.message.contains("b is down"), "{err}");
        let cached = cache.get_or_connect(&["a", "c"], |_| panic!("connected twice")).unwrap();
        assert_eq!(cached.len(), 2);
    }
}
