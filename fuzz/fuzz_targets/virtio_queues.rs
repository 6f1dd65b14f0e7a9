//! The virtio-pci transport with its block and net devices, driven like a hostile guest
//! driver: arbitrary BAR and configuration-space accesses, a negotiation and queue setup
//! with arbitrary features, sizes and ring addresses, arbitrary guest memory under the
//! rings (descriptors, chains, request headers), notifies followed by `process`, and
//! received frames delivered into whatever buffers the guest offered.
//!
//! A guest must never panic the VMM: every broken contract ends in NEEDS_RESET. After the
//! accesses, the function's saved state must restore onto a fresh device and save
//! identically (the backup rebuilds it from exactly that).
//!
//! Input: byte 0 picks the device, then operations (see `run`). Guest memory is 64 KiB at
//! address 0; the seeds lay a queue at 0x0 (descriptors), 0x1000 (avail), 0x2000 (used).

#![no_main]

use ftvm_devices::pci::PciFunction;
use ftvm_devices::virtio::{
    Block, FrameQueue, MemBackend, Net, VirtioDevice, VirtioPci, MAX_FRAME_LEN,
};
use ftvm_devices::IrqLines;
use ftvm_fuzz::Ops;
use libfuzzer_sys::fuzz_target;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const MEM_SIZE: usize = 64 << 10;
const IRQ: u8 = 10;
/// ACKNOWLEDGE | DRIVER, FEATURES_OK, DRIVER_OK (virtio 1.x device status bits).
const ACK_DRIVER: u64 = 1 | 2;
const FEATURES_OK: u64 = 8;
const DRIVER_OK: u64 = 4;
const VERSION_1: u64 = 1 << 32;

fn bar_write(f: &mut dyn PciFunction, offset: u64, width: usize, value: u64) {
    f.bar_write(0, offset, &value.to_le_bytes()[..width]);
}

/// The Linux modern driver's bring-up with the input's features and queue layout.
fn bring_up(f: &mut dyn PciFunction, queues: u16, ops: &mut Ops<'_>) {
    bar_write(f, 0x14, 1, 0);
    bar_write(f, 0x14, 1, ACK_DRIVER);
    let features = ops.u64() | VERSION_1;
    for (select, half) in [(0, features & 0xffff_ffff), (1, features >> 32)] {
        bar_write(f, 0x08, 4, select);
        bar_write(f, 0x0c, 4, half);
    }
    bar_write(f, 0x14, 1, ACK_DRIVER | FEATURES_OK);
    for q in 0..queues {
        bar_write(f, 0x16, 2, u64::from(q));
        bar_write(f, 0x18, 2, u64::from(ops.u16()));
        for offset in [0x20, 0x28, 0x30] {
            // Mostly inside guest memory, sometimes anywhere.
            let addr = match ops.u8() {
                0xff => ops.u64(),
                b => u64::from(b) << 8,
            };
            bar_write(f, offset, 4, addr & 0xffff_ffff);
            bar_write(f, offset + 4, 4, addr >> 32);
        }
        bar_write(f, 0x1c, 2, 1);
    }
    bar_write(f, 0x14, 1, ACK_DRIVER | FEATURES_OK | DRIVER_OK);
}

fn run<D: VirtioDevice>(
    make: impl Fn() -> D,
    queues: u16,
    ops: &mut Ops<'_>,
    mut deliver: impl FnMut(&mut VirtioPci<D>, &GuestMemoryMmap, &[u8]),
) where
    D::State: PartialEq + std::fmt::Debug,
{
    let mem =
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).expect("guest memory");
    let lines = IrqLines::new();
    let line = || lines.level_line(IRQ).expect("IRQ line");
    let mut f = VirtioPci::new(make(), line()).expect("virtio function");
    for _ in 0..1024 {
        if ops.is_empty() {
            break;
        }
        let op = ops.u8();
        let width = [1usize, 2, 4, 8][usize::from(op >> 3 & 3)];
        match op & 7 {
            0 => {
                let offset = u64::from(ops.u16()) % 0x4400;
                bar_write(&mut f, offset, width, ops.u64());
            }
            1 => {
                let mut b = [0u8; 8];
                f.bar_read(0, u64::from(ops.u16()) % 0x4400, &mut b[..width]);
            }
            2 => {
                let offset = usize::from(ops.u16() % 0x110);
                f.config_write(offset, &ops.u64().to_le_bytes()[..width]);
            }
            3 => {
                let mut b = [0u8; 8];
                f.config_read(usize::from(ops.u16() % 0x110), &mut b[..width]);
            }
            4 => bring_up(&mut f, queues, ops),
            5 => {
                // Notify a queue (any index: the guest chooses), then the VMM's exit.
                let q = u64::from(ops.u8() % 4);
                bar_write(&mut f, 0x3000 + 4 * q, 2, q);
                let _ = f.process(&mem);
            }
            6 => {
                // The guest writes its descriptors, rings and buffers.
                let addr = u64::from(ops.u16());
                let n = usize::from(ops.u8());
                let bytes = ops.bytes(n);
                let room = (MEM_SIZE as u64).saturating_sub(addr) as usize;
                let _ = mem.write_slice(&bytes[..bytes.len().min(room)], GuestAddress(addr));
            }
            _ => {
                let n = usize::from(ops.u16()) % (MAX_FRAME_LEN + 64);
                let frame: Vec<u8> = (0..n).map(|i| i as u8 ^ op).collect();
                deliver(&mut f, &mem, &frame);
            }
        }
    }
    let s = f.state();
    let again = VirtioPci::from_state(make(), line(), &s).expect("virtio refuses its own state");
    assert_eq!(again.state(), s);
}

fuzz_target!(|data: &[u8]| {
    let mut ops = Ops::new(data);
    if ops.u8() & 1 == 0 {
        let read_only = ops.u8() & 1 == 1;
        let make = || Block::new(MemBackend::new(8 << 10), read_only, "fuzz");
        run(make, 1, &mut ops, |_, _, _| {});
    } else {
        let make = || Net::new([0x52, 0x54, 0, 0x12, 0x34, 0x56], FrameQueue::default());
        run(make, 2, &mut ops, |f, mem, frame| {
            let _ = f.deliver_frame(mem, frame);
        });
    }
});
