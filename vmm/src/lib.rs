//! ftvm: a fault-tolerant virtual machine monitor on KVM.
//!
//! This crate holds the deterministic single-vCPU machine: guest memory and boot, the vCPU
//! thread and its exit loop, the buses and the PC platform, and VM state saving.

// The public API is documented; CI's clippy (-D warnings) keeps it so.
#![warn(missing_docs)]

pub mod boot;
pub mod bus;
pub mod clock;
pub mod compat;
pub mod console;
pub mod counters;
pub mod cpu;
pub mod disk;
pub mod ft;
pub mod kicker;
pub(crate) mod kvm_ext;
pub mod layout;
pub mod linux;
pub mod machine;
pub mod memory;
pub mod net;
pub mod pagecheck;
pub mod pagesets;
pub mod platform;
pub mod profile;
pub mod record;
pub mod replay;
pub mod snapshot;
pub mod state;
pub mod stop;
pub mod vcpu;
