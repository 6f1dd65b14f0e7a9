//! Where the guest was when a replay diverged, for whoever has to find out why: its
//! registers, the text that registers point to (a kernel message being printed names
//! the event that differed), and the return addresses on its stack (match them against
//! the guest kernel's /proc/kallsyms).

use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Stack words examined.
const STACK_WORDS: u64 = 48;
/// Bytes shown at each register that points to mapped guest memory.
const TEXT_BYTES: usize = 96;

/// Guest-physical address of a guest-virtual one, through the guest's page tables.
fn physical(fd: &VcpuFd, gva: u64) -> Option<GuestAddress> {
    let t = fd.translate_gva(gva).ok()?;
    (t.valid != 0).then_some(GuestAddress(t.physical_address))
}

fn printable(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|&c| {
            if (0x20..0x7f).contains(&c) {
                c as char
            } else {
                '.'
            }
        })
        .collect()
}

/// One line: registers, text at pointer registers, kernel return addresses on the stack.
pub fn describe(fd: &VcpuFd, mem: &GuestMemoryMmap) -> String {
    let Ok(r) = fd.get_regs() else {
        return "registers unavailable".into();
    };
    let mut out = format!(
        "rip {:#x} rsp {:#x} rflags {:#x} rax {:#x} rbx {:#x} rcx {:#x} rdx {:#x} rsi {:#x} rdi {:#x}",
        r.rip, r.rsp, r.rflags, r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi
    );
    for (name, v) in [
        ("rbx", r.rbx),
        ("rbp", r.rbp),
        ("rsi", r.rsi),
        ("rdi", r.rdi),
        ("r12", r.r12),
        ("r13", r.r13),
        ("r14", r.r14),
        ("r15", r.r15),
    ] {
        let mut text = [0u8; TEXT_BYTES];
        if let Some(at) = physical(fd, v) {
            if mem.read_slice(&mut text, at).is_ok() {
                out.push_str(&format!("; {name} -> \"{}\"", printable(&text)));
            }
        }
    }
    out.push_str("; kernel text on the stack:");
    for i in 0..STACK_WORDS {
        let Some(at) = physical(fd, r.rsp.wrapping_add(i * 8)) else {
            break;
        };
        let Ok(word) = mem.read_obj::<u64>(at) else {
            break;
        };
        // The x86-64 kernel's text lives in the top 2 GiB.
        if word >> 31 == 0x1_ffff_ffff {
            out.push_str(&format!(" [{i}] {word:#x}"));
        }
    }
    out
}
