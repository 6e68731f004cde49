//! Buffers the library hands to C callers, with their one way to be freed.

use std::ffi::c_char;

/// Bytes owned by kvxfer and handed to the caller. `data` is followed by a
/// NUL byte (not counted in `len`), so text can be read as a C string.
/// Free with `kvx_bytes_free`, exactly once; freeing a zeroed struct is a no-op.
#[allow(non_camel_case_types)]
#[repr(C)]
#[derive(Debug)]
pub struct kvx_bytes {
    pub data: *mut u8,
    pub len: usize,
}

impl kvx_bytes {
    pub const EMPTY: kvx_bytes = kvx_bytes { data: std::ptr::null_mut(), len: 0 };

    pub fn from_vec(mut bytes: Vec<u8>) -> Self {
        let len = bytes.len();
        bytes.push(0);
        let boxed = bytes.into_boxed_slice();
        kvx_bytes { data: Box::into_raw(boxed) as *mut u8, len }
    }

    /// # Safety
    /// `self` must come from `from_vec` and not have been freed.
    pub unsafe fn free(&mut self) {
        if !self.data.is_null() {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.data, self.len + 1)));
        }
        *self = Self::EMPTY;
    }
}

/// Notifications drained from an agent, in arrival order. Read with
/// `kvx_notification_list_len` / `kvx_notification_list_get`; free with
/// `kvx_notification_list_free`.
#[allow(non_camel_case_types)]
pub struct kvx_notification_list {
    pub items: Vec<(std::ffi::CString, Vec<u8>)>,
}

impl kvx_notification_list {
    pub fn new(items: Vec<(String, Vec<u8>)>) -> Self {
        let items = items
            .into_iter()
            .map(|(sender, msg)| {
                // Sender names come from validated descriptors or headers; strip NULs defensively
                // (the name's own buffer becomes the C string when it has none).
                let sender = std::ffi::CString::new(sender).unwrap_or_else(|e| {
                    std::ffi::CString::new(e.into_vec().into_iter().filter(|&b| b != 0).collect::<Vec<u8>>())
                        .unwrap_or_default()
                });
                (sender, msg)
            })
            .collect();
        kvx_notification_list { items }
    }

    pub fn sender(&self, i: usize) -> *const c_char {
        self.items[i].0.as_ptr()
    }
}
