//! An agent's connection info: a control-channel listener that hands out the
//! agent's descriptor, and the client that fetches it. Both backends use it,
//! so loading a peer by connection info is one short-lived TCP request that
//! leaves nothing open behind it, whether the peer lives or dies.

use super::auth::{PeerAuth, Purpose};
use super::control::{self, ControlHandler, ControlServer};
use super::error::{Error, Result};
use super::net;
use super::request::AgentSettings;
use super::wire::ControlMessage;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What the listener needs from an agent.
pub trait DescribedAgent: Send + Sync + 'static {
    fn agent_name(&self) -> &str;
    /// The bytes `kvx_agent_get_local_desc` returns, as of now.
    fn describe(&self) -> Result<Vec<u8>>;
}

struct DescriptorService<T>(Weak<T>);

impl<T: DescribedAgent> ControlHandler for DescriptorService<T> {
    fn handle(&self, request: ControlMessage, _from: SocketAddr) -> ControlMessage {
        let Some(agent) = self.0.upgrade() else {
            return ControlMessage::Refused { reason: "agent is shutting down".into() };
        };
        match request {
            ControlMessage::GetAgentDesc { expected_name } if expected_name == agent.agent_name() => {
                match agent.describe() {
                    Ok(desc) => ControlMessage::AgentDesc { desc },
                    Err(e) => ControlMessage::Refused { reason: e.to_string() },
                }
            }
            ControlMessage::GetAgentDesc { expected_name } => ControlMessage::Refused {
                reason: format!("this is agent {:?}, not {expected_name:?}", agent.agent_name()),
            },
            _ => ControlMessage::Refused { reason: "unexpected request for a transfer agent".into() },
        }
    }
}

/// Serve `agent`'s descriptor where the settings say; None when they ask for no listener.
pub fn serve<T: DescribedAgent>(settings: &AgentSettings, agent: &Arc<T>) -> Result<Option<ControlServer>> {
    if !settings.use_listener {
        return Ok(None);
    }
    let ip = net::choose_listen_ip(settings.listen_ip.as_deref(), "TRTLLM_NIXL_INTERFACE")?;
    let handler = Arc::new(DescriptorService(Arc::downgrade(agent)));
    Ok(Some(ControlServer::start(ip, settings.listen_port, handler, settings.auth.clone(), "kvx-agent-listen")?))
}

/// The connection info a listener advertises (empty without one, as TensorRT-LLM expects).
pub fn connection_info(listener: Option<&ControlServer>) -> String {
    listener.map(|l| net::format_connection_info(&l.local_addr())).unwrap_or_default()
}

/// Agent `name`'s descriptor from the listener at `connection_info`, within
/// `timeout` (still sealed: open it with `open`).
pub fn fetch(name: &str, connection_info: &str, auth: &PeerAuth, timeout: Duration) -> Result<Vec<u8>> {
    let addr = net::parse_connection_info(connection_info)?;
    let request = ControlMessage::GetAgentDesc { expected_name: name.to_owned() };
    let reply = control::request(addr, &request, auth, timeout)
        .map_err(|e| e.context(&format!("loading agent {name:?} from {connection_info}")))?;
    match reply {
        ControlMessage::AgentDesc { desc } => Ok(desc),
        other => Err(Error::malformed(format!("unexpected reply from {connection_info}: {other:?}"))),
    }
}

/// Seal an agent's descriptor bytes for peers (unchanged without a secret).
pub fn seal(auth: &PeerAuth, descriptor: Vec<u8>) -> Vec<u8> {
    auth.seal(Purpose::AgentDescriptor, descriptor, b"").0
}

/// The descriptor inside `bytes` from a peer, once authenticated: the only
/// way peer descriptor bytes reach a backend's parser.
pub fn open<'a>(auth: &PeerAuth, name: &str, bytes: &'a [u8]) -> Result<&'a [u8]> {
    Ok(auth.open(Purpose::AgentDescriptor, bytes, b"", &format!("descriptor of agent {name:?}"))?.payload)
}
