//! Received notifications (sync messages), kept in arrival order with their
//! sender until the application drains them.

use parking_lot::Mutex;

/// Bound on undrained notification bytes, so a peer cannot exhaust memory
/// by flooding an agent whose owner never drains.
pub const MAX_QUEUED_BYTES: usize = 1 << 30;

#[derive(Default)]
pub struct NotificationQueue {
    inner: Mutex<Queued>,
}

/// Messages with their senders, oldest first, and the bytes they hold.
#[derive(Default)]
struct Queued {
    messages: Vec<(String, Vec<u8>)>,
    bytes: usize,
}

impl NotificationQueue {
    /// Queue one message; false (and dropped) when the queue is full.
    pub fn push(&self, sender: String, message: Vec<u8>) -> bool {
        let mut q = self.inner.lock();
        let cost = sender.len() + message.len();
        if q.bytes + cost > MAX_QUEUED_BYTES {
            crate::log_at!(Error, "notification from {sender:?} dropped: {} bytes already queued", q.bytes);
            return false;
        }
        q.bytes += cost;
        q.messages.push((sender, message));
        true
    }

    /// Take everything received so far, oldest first.
    pub fn drain(&self) -> Vec<(String, Vec<u8>)> {
        let mut q = self.inner.lock();
        q.bytes = 0;
        std::mem::take(&mut q.messages)
    }
}
