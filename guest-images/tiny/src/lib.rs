//! Tiny test guests for ftvm: flat 64-bit programs linked at 1 MiB and entered like a
//! Linux `vmlinux`, each exercising one path of the machine in milliseconds.
//!
//! | guest | what it exercises |
//! | --- | --- |
//! | `timer` | PIT rate generator, PIC, interrupt delivery at HLT, EOI (also as `timer.bzimage`) |
//! | `serial` | 16550 receive interrupt, serial input and output, i8042 reset |
//! | `io` | port reads (CMOS, PIT latch, i8042), MMIO reads/writes (system controller) |
//! | `usermode` | a CPL3 busy loop with the timer running, TSS I/O bitmap, `int 0x80` |
//! | `rdtsc` | native RDTSC, which no VMM can record on this host |
//! | `syscall` | SYSCALL from CPL3 into a supervisor-only entry page, SYSRET back |
//! | `counter` | a console counter paced by the PIT, for failover tests (every number exactly once) |
//! | `tsc-counter` | the counter with an RDTSC value printed every 125 counts: a backup diverges there and is resynchronised |
//! | `virtio-blk` | PCI configuration mechanism #1, a virtio-blk queue, one write and one read |
//! | `net-echo-server` | the `virtio-net` echo guest without an end (the pair tests on simulated hosts) |
//! | `spin` | the `usermode` loop, 50 times longer (the benchmark's CPU-bound guest) |
//! | `chatter` | 5,000 console lines, unpaced (the benchmark's console throughput) |
//! | `disk-writer` | 500 disk records paced by the PIT, read back at the end, for failover with disks |
//! | `virtio-net` | a minimal virtio-net driver: finds the NIC on bus 0, posts receive buffers, echoes 8 frames with the MACs swapped |
//! | `virtio-net-spin` | the same, waiting for frames in a loop without exits (frames come at kicks) |
//! | `kernel-loops` | CPL0 loops without exits while the timer runs (ticks land at kicks: event points): registers changing, registers still, `rep movsb`, nested |
//! | `point-ambiguous` | a CPL0 loop whose registers repeat while its memory moves: an event point that names the wrong pass |
//! | `bad-port`, `bad-mmio`, `triple-fault` | guests that misbehave; the VMM must stop cleanly |

include!(concat!(env!("OUT_DIR"), "/guests.rs"));

/// Path of the ELF of the guest called `name`.
pub fn guest(name: &str) -> Option<&'static str> {
    GUESTS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_guest_is_an_elf_at_one_mib() {
        assert!(super::GUESTS.len() >= 8);
        for (name, path) in super::GUESTS
            .iter()
            .filter(|(n, _)| !n.ends_with(".bzimage"))
        {
            let bytes = std::fs::read(path).unwrap();
            assert_eq!(&bytes[..4], b"\x7fELF", "{name}");
            let entry = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
            assert_eq!(entry, 0x10_0000, "{name} enters at 1 MiB");
        }
    }

    #[test]
    fn bzimage_has_a_setup_header() {
        let bytes = std::fs::read(super::guest("timer.bzimage").unwrap()).unwrap();
        assert_eq!(&bytes[0x202..0x206], b"HdrS");
        assert!(bytes.len() > 1024 + 0x200);
    }
}
