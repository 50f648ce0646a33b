//! f7tfs: mount HPC storage reached through FirecREST v2 as a local folder (v1: detected and
//! refused with a clear message; not implemented yet).
//!
//! Layers, dependencies pointing one way: `fuse` (thin adapter) → `fs` (one async fn per FUSE
//! op) → `cache` + `staging` → `remote` (`trait RemoteFs`, the v2 client) → HTTP.
//! `server` is the bundled FirecREST-compatible server (`f7tfs serve`), used by the demo, the
//! tests and the benchmarks. See `shared/DESIGN.md` for the semantics.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]
#![warn(clippy::await_holding_lock)]

pub mod cache;
pub mod cli;
pub mod config;
pub mod error;
pub mod fs;
pub mod fuse;
pub mod logging;
pub mod mount;
pub mod remote;
pub mod server;
pub mod staging;
pub mod status;
