//! Backend-independent pieces: errors, the memory/descriptor model, wire
//! formats, configuration, the control channel and completion primitives.

pub mod auth;
pub mod buffer;
pub mod coalesce;
pub mod completion;
pub mod config;
pub mod connections;
pub mod control;
pub mod descriptor_service;
pub mod error;
pub mod log;
pub mod memory;
pub mod metrics;
pub mod net;
pub mod notify;
pub mod parallel;
pub mod request;
pub mod rng;
pub mod select;
pub mod stats;
pub mod wire;
