//! Fixed guest-physical addresses of the boot structures (the same for every VM, so a
//! snapshot from one host means the same thing on another).

pub use crate::memory::{MMIO_HOLE_END, MMIO_HOLE_START};

/// Global descriptor table used to enter 64-bit mode.
pub const GDT_START: u64 = 0x500;
/// An empty interrupt descriptor table: the kernel installs its own.
pub const IDT_START: u64 = 0x520;
/// Linux zero page (boot_params); RSI points here at entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack top.
pub const BOOT_STACK_TOP: u64 = 0x8ff0;
/// Identity page tables: PML4, one PDPT, four page directories (4 GiB of 2 MiB pages).
pub const PML4_START: u64 = 0x9000;
/// The page-directory-pointer table, whose first four entries cover 4 GiB.
pub const PDPT_START: u64 = 0xa000;
/// The first of the four page directories, one page each, back to back.
pub const PD_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// Bytes reserved for the command line, its NUL terminator included.
pub const CMDLINE_MAX: usize = 4096;
/// Boot data for the kernel (`setup_data`): the random seed, right after the command line.
pub const SETUP_DATA_START: u64 = 0x21000;
/// Low RAM ends here; the EBDA and BIOS area above are not RAM.
pub const EBDA_START: u64 = 0x9fc00;
/// Kernels load at 1 MiB or above.
pub const HIMEM_START: u64 = 0x10_0000;
/// The ftvm system controller (MMIO) at the start of the hole.
pub const SYSCTL_START: u64 = 0xd000_0000;
/// Length of the system controller's MMIO range, in bytes.
pub const SYSCTL_LEN: u64 = 0x1000;
