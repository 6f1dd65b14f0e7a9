//! ftvm's guest workload: the primary/backup key/value service of the replication lecture.
//!
//! - [`viewservice`]: the view service's state machine (pure, ticks for time);
//! - [`kv`]: the key/value server's logic (pure), with the safety argument;
//! - [`protocol`]: messages, and [`frame`]: framing, its limits and deadlines;
//! - [`faults`]: fault injection for tests;
//! - [`net`]: TCP calls and server loop with fault injection;
//! - [`vs_server`], [`server`], [`client`]: the view service, key/value server and client
//!   over TCP, used by the `viewservice`, `kvserver` and `kvclient` binaries;
//! - [`linearizability`]: a checker for recorded client histories, and [`workload`]: the
//!   concurrent Get/Put/Append clients whose histories it checks.

// The public API is documented, and CI's clippy (-D warnings) keeps it so.
#![warn(missing_docs)]

pub mod client;
pub mod faults;
pub mod frame;
pub mod kv;
pub mod linearizability;
pub mod net;
pub mod protocol;
pub mod server;
pub mod store;
pub mod viewservice;
pub mod vs_server;
pub mod workload;
