//! What every connection manager shares: the cache that gives one connection
//! per peer address, and the listener side of the connection handshake.

use super::error::Result;
use super::wire::ControlMessage;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Connections by peer address; the same peer always yields the same connection.
pub struct ConnectionCache<C> {
    by_peer: Mutex<HashMap<String, Arc<C>>>,
    /// One connect at a time, so concurrent callers for one peer share a connection.
    connect_lock: Mutex<()>,
}

impl<C> Default for ConnectionCache<C> {
    fn default() -> Self {
        ConnectionCache { by_peer: Mutex::new(HashMap::new()), connect_lock: Mutex::new(()) }
    }
}

impl<C> ConnectionCache<C> {
    /// The connection to each address, connecting with `connect` where none is cached.
    pub fn get_or_connect(
        &self,
        addresses: &[&str],
        mut connect: impl FnMut(&str) -> Result<Arc<C>>,
    ) -> Result<Vec<*const C>> {
        let mut out = Vec::with_capacity(addresses.len());
        for &address in addresses {
            if let Some(c) = self.by_peer.lock().get(address) {
                out.push(Arc::as_ptr(c));
                continue;
            }
            let _serial = self.connect_lock.lock();
            if let Some(c) = self.by_peer.lock().get(address) {
                out.push(Arc::as_ptr(c));
                continue;
            }
            let conn = connect(address)?;
            let conn = self.by_peer.lock().entry(address.to_owned()).or_insert(conn).clone();
            out.push(Arc::as_ptr(&conn));
        }
        Ok(out)
    }

    /// Cache a connection a peer opened to us, unless one to that address exists.
    pub fn insert_accepted(&self, address: String, conn: Arc<C>) {
        self.by_peer.lock().entry(address).or_insert(conn);
    }

    pub fn clear(&self) {
        self.by_peer.lock().clear();
    }
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
