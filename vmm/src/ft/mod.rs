//! Fault tolerance: a primary and a backup VMM of one guest (DESIGN.md section 3).
//!
//! - [`pipe`]: the bounded log buffer on each side of the channel;
//! - [`secure`], [`key`]: the channel's authentication and encryption, and its key;
//! - [`link`]: the TCP logging channel, heartbeats and the failure verdict;
//! - [`transfer`]: the state transfer that starts a backup (and re-protects a primary);
//! - [`console`]: the console under the output rule, and its exactly-once stream;
//! - [`shared`]: the shared directory's atomic test-and-set;
//! - [`status`]: what `ftvm status` shows;
//! - [`metrics`]: the same for Prometheus (`--metrics ADDR`);
//! - [`role`]: the roles (primary alone or protected, backup, going live, halted) as a core
//!   without I/O: events in, actions out;
//! - [`node`]: the controller that owns it all, feeds the role core what happens and
//!   carries out what it decides.

pub mod announce;
pub mod console;
pub mod deadline;
pub mod disk_copy;
pub mod frames;
pub mod key;
pub mod link;
pub mod metrics;
pub mod node;
pub mod pipe;
pub mod role;
pub mod secure;
pub mod shared;
pub mod status;
pub mod transfer;

pub use node::{run_backup, run_primary, FtError, FtOptions, Outcome};
