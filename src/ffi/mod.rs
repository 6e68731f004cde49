//! The C ABI (`kvx_*`): argument checks, the panic boundary and handle
//! wrappers. Each handle remembers the dispatch table it was created with.

pub mod agent;
pub mod conn;
pub mod files;
pub mod library;
pub mod observe;
pub mod status;
