//! C ABI of observability: the facts of one transfer, counter snapshots of
//! agents and managers (JSON text, see docs/observability.md), and the
//! process's Prometheus endpoint. Counting itself lives in `core::stats`.

use super::agent::{kvx_agent, kvx_xfer};
use super::conn::kvx_cm;
use super::status::{guard, non_null};
use crate::core::buffer::kvx_bytes;
use crate::core::error::{kvx_status, Error};
use crate::core::stats::{self, check_struct_size, kvx_xfer_info};
use crate::dispatch::kvx_backend_table;
use std::mem::offset_of;

fn require(table: &kvx_backend_table, offset: usize, what: &str) -> Result<(), Error> {
    if table.has(offset) {
        Ok(())
    } else {
        Err(Error::new(kvx_status::KVX_ERR_UNSUPPORTED, format!("this backend's table has no {what}")))
    }
}

/// Fill `*out` with the transfer's facts: bytes, descriptors before and
/// after coalescing, the path and transport it took, post and completion
/// times, and its status (`KVX_IN_PROGRESS` while running). Set
/// `out->struct_size = sizeof(kvx_xfer_info)` first. The strings in `*out`
/// stay valid until `kvx_xfer_destroy`.
///
/// # Safety
/// `xfer` is NULL (refused) or a transfer from `kvx_agent_submit` not yet passed to `kvx_xfer_destroy`;
/// `out` is NULL (refused) or valid for reading `struct_size` and writing `struct_size` bytes.
///
/// Thread safety: any thread, concurrently with waits on the same transfer.
#[no_mangle]
pub unsafe extern "C" fn kvx_xfer_info_get(xfer: *const kvx_xfer, out: *mut kvx_xfer_info) -> kvx_status {
    guard(|| {
        non_null(xfer, "xfer")?;
        non_null(out, "out")?;
        check_struct_size((*out).struct_size, std::mem::size_of::<kvx_xfer_info>(), "kvx_xfer_info")?;
        let x = &*xfer;
        require(x.table, offset_of!(kvx_backend_table, xfer_info), "transfer facts")?;
        (x.table.xfer_info)(x.object, out);
        Ok(())
    })
}

/// The agent's counters as one JSON object (schema in docs/observability.md:
/// totals, failures by status, latency histograms by size class, and the
/// same counters per peer). Free `*out` with `kvx_bytes_free`.
///
/// # Safety
/// `agent` is NULL (refused) or an agent from `kvx_agent_create` not yet passed to `kvx_agent_destroy`;
/// `out` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread, concurrently with every other call on the agent.
#[no_mangle]
pub unsafe extern "C" fn kvx_agent_stats(agent: *const kvx_agent, out: *mut kvx_bytes) -> kvx_status {
    guard(|| {
        non_null(agent, "agent")?;
        non_null(out, "out")?;
        *out = kvx_bytes::EMPTY;
        let a = &*agent;
        require(a.table, offset_of!(kvx_backend_table, agent_stats), "agent counters")?;
        (a.table.agent_stats)(a.object, out);
        Ok(())
    })
}

/// The connection manager's counters as one JSON object (as
/// `kvx_agent_stats`; peers are named by address). Free `*out` with `kvx_bytes_free`.
///
/// # Safety
/// `cm` is NULL (refused) or a manager from `kvx_cm_create` not yet passed to `kvx_cm_destroy`;
/// `out` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread, concurrently with every other call on the manager.
#[no_mangle]
pub unsafe extern "C" fn kvx_cm_stats(cm: *const kvx_cm, out: *mut kvx_bytes) -> kvx_status {
    guard(|| {
        non_null(cm, "cm")?;
        non_null(out, "out")?;
        *out = kvx_bytes::EMPTY;
        let m = &*cm;
        require(m.table, offset_of!(kvx_backend_table, cm_stats), "manager counters")?;
        (m.table.cm_stats)(m.object, out);
        Ok(())
    })
}

/// Every live agent's and manager's counters in this process, as one JSON
/// object (`{"schema", "pid", "version", "scopes": [...]}`), what
/// `kvxfer info --stats` prints. Free `*out` with `kvx_bytes_free`.
///
/// # Safety
/// `out` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_stats_snapshot(out: *mut kvx_bytes) -> kvx_status {
    guard(|| {
        non_null(out, "out")?;
        *out = kvx_bytes::from_vec(stats::process_snapshot().to_string().into_bytes());
        Ok(())
    })
}

/// The address ("ip:port") the Prometheus endpoint listens on, empty when
/// `KVX_METRICS_ADDR` is unset or could not be served. The endpoint starts
/// with the process's first agent or manager; this call starts it too.
/// Free `*out` with `kvx_bytes_free`.
///
/// # Safety
/// `out` is NULL (refused) or valid for writing one value.
///
/// Thread safety: any thread.
#[no_mangle]
pub unsafe extern "C" fn kvx_metrics_address(out: *mut kvx_bytes) -> kvx_status {
    guard(|| {
        non_null(out, "out")?;
        crate::core::metrics::start_from_environment();
        let text = crate::core::metrics::endpoint().map_or(String::new(), |a| a.to_string());
        *out = kvx_bytes::from_vec(text.into_bytes());
        Ok(())
    })
}
