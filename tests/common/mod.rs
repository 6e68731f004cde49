pub use kvxfer::harness::*;
