//! Shared test helpers. Each test binary includes this with `mod common;`.
#![allow(dead_code)]

pub mod server;
