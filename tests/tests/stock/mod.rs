//! What the stock-kernel test does from its snapshot, one file per step.

pub mod failover;
pub mod pair;
pub mod persist;
pub mod record;
pub mod seq;
pub mod serve;

pub use ftvm_e2e::ftvm_command as ftvm;
pub use ftvm_e2e::stock::{sha256_hex, StockDisks, GUEST_ADDR, SEED_TEXT};
pub use ftvm_e2e::Hosts;
pub use std::path::Path;
pub use std::process::{Command, Stdio};
pub use std::time::{Duration, Instant};
