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

/// `--restore SNAP --net tap=tap0` and `disks`: a VM from the snapshot on its host's TAP.
pub fn restore_args(snap: &Path, disks: &StockDisks) -> Vec<String> {
    let mut args = vec![
        "--restore".to_string(),
        snap.display().to_string(),
        "--net".into(),
        "tap=tap0".into(),
    ];
    args.extend(disks.args());
    args
}
