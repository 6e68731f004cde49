//! Transport backends. Each fills one `dispatch::kvx_backend_table`.

pub mod locate;
pub mod nixl;
pub mod ucx;
