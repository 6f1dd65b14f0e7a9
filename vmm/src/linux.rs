//! The kernel command line ftvm gives a Linux guest by default.
//!
//! Every item is there to keep the guest deterministic on the user-space platform or
//! bootable on hosts whose KVM emulates kernel mode (shared/HOST-KVM.md):
//! - console on the emulated 16550, only one UART probed;
//! - no local APIC or I/O APIC (there are none), no ACPI (there is no firmware), and no PCI
//!   unless the machine has PCI devices (disks): then `pci=conf1`, configuration
//!   mechanism #1 probed directly (no PCI BIOS or MMCONFIG to look for), and each
//!   function's interrupt taken from its Interrupt Line register;
//! - no paravirtual clock, async page faults or steal time (KVM would write guest memory at
//!   host-time moments), TSC hidden so the clock comes from the PIT (`clearcpuid=tsc` must
//!   stay first: the kernel keeps only 127 characters of that list);
//! - features some hosts' emulators cannot run hidden (XSAVE, SMAP, SSE4, ...);
//! - `lpj` preset so no delay loop is calibrated against host time;
//! - `reboot=k` so a reboot (or a panic, with `panic=-1`) reaches the keyboard controller
//!   and ends the VM cleanly; `io_delay=none` spares an exit per legacy port access;
//! - no address randomisation that draws on RDTSC, which some hosts cannot record:
//!   `norandmaps` (user-space layouts at exec) and `randomize_kstack_offset=off` (the
//!   kernel stack offset of every system call);
//! - two pieces of the tracing subsystem's boot work skipped (`initcall_blacklist=`), which
//!   on hosts that emulate kernel mode cost over a minute of a stock boot (profiled with
//!   `--profile`, README "The stock boot"): `ftrace_check_for_weak_functions` and its
//!   `ftrace_check_sync` (a symbol lookup for each of the tens of thousands of ftrace
//!   call sites, to mark those in overridden weak functions; without it, enabling
//!   function tracing on such a site fails ftrace's own check of the bytes it patches
//!   instead of being refused earlier), and `trace_eval_init` (resolving enum names in
//!   every trace event's format; without it the formats show the names). Nothing else
//!   depends on them.

/// ftvm's default kernel command line (see the module documentation) for a machine without
/// PCI; [`build_cmdline`] turns its `pci=off` into `pci=conf1` for one with PCI.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 8250.nr_uarts=1 reboot=k panic=-1 nokaslr \
acpi=off pci=off nolapic noapic no_timer_check mitigations=off cryptomgr.notests lpj=5000 \
io_delay=none norandmaps randomize_kstack_offset=off no-kvmclock no-kvmapf no-steal-acc \
tsc=unstable noxsave \
initcall_blacklist=trace_eval_init,ftrace_check_for_weak_functions,ftrace_check_sync \
clearcpuid=tsc,smap,smep,fsgsbase,pcid,invpcid,rdrand,rdseed,popcnt,rdtscp,serialize,clflushopt,rdpid,cx16,ssse3,sse4_1,sse4_2,pclmulqdq";

/// The command line for a guest: ftvm's default followed by the user's additions, or
/// exactly the user's text when the default is turned off. Parameters after a `--` in the
/// user's part stay last (they go to init). `pci`: the machine has a PCI bus, so the
/// default lets the kernel probe it (`pci=conf1` instead of `pci=off`).
pub fn build_cmdline(user: &str, use_default: bool, pci: bool) -> String {
    let user = user.trim();
    let default = if pci {
        DEFAULT_CMDLINE.replacen(" pci=off ", " pci=conf1 ", 1)
    } else {
        DEFAULT_CMDLINE.to_owned()
    };
    match (use_default, user.is_empty()) {
        (false, _) => user.to_owned(),
        (true, true) => default,
        (true, false) => format!("{default} {user}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clearcpuid_list_fits_the_kernels_limit_with_tsc_first() {
        let list = DEFAULT_CMDLINE
            .split_whitespace()
            .find_map(|p| p.strip_prefix("clearcpuid="))
            .unwrap();
        assert!(list.len() <= 127, "{} characters", list.len());
        assert!(list.starts_with("tsc,"));
    }

    #[test]
    fn user_text_is_appended_or_replaces() {
        assert_eq!(build_cmdline("", true, false), DEFAULT_CMDLINE);
        assert!(build_cmdline("quiet -- echo hi", true, false).ends_with(" quiet -- echo hi"));
        assert_eq!(build_cmdline(" root=/dev/x ", false, false), "root=/dev/x");
    }

    #[test]
    fn pci_is_off_unless_the_machine_has_it() {
        assert!(DEFAULT_CMDLINE.contains(" pci=off "));
        let with = build_cmdline("", true, true);
        assert!(
            !with.contains("pci=off") && with.contains(" pci=conf1 "),
            "{with}"
        );
        assert_eq!(with.len(), DEFAULT_CMDLINE.len() + 2);
    }
}
