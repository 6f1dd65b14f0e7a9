//! Writes the seed inputs of every fuzz target: real log frames, real channel messages,
//! real device states and kv frames, made by the same encoders ftvm uses, so the fuzzer
//! starts past the magic numbers and checksums instead of having to guess them.
//!
//! `gen_seeds DIR` writes `DIR/<target>/seed-<name>`; the same files every time.

use std::path::Path;

// Built with the targets' coverage instrumentation (one build for all), the code calls
// SanitizerCoverage hooks, which libFuzzer defines: link it even though nothing here
// fuzzes. Its own main() is not pulled in, since this binary has one.
extern crate libfuzzer_sys;

use ft_log::{
    encode_channel_header, encode_entry, encode_header, encode_log_messages, encode_message,
    encode_pages_messages, Delta, Digest, Entry, ExitKind, ExitRecord, PacketOutcome, Page,
    ToBackup, ToPrimary,
};
use ftvm_devices::{
    AbsentPorts, AbsentPortsState, Cmos, IrqLine, IrqLines, Pic, Pit, Serial, SysCtl, I8042,
};
use ftvm_fuzz::FuzzClock;
use ftvm_kv::protocol::{self, ClientOp, Op, Request, Response, Snapshot, View, ViewReply};
use serde::Serialize;

fn write(dir: &Path, target: &str, name: &str, bytes: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).expect("create the corpus directory");
    std::fs::write(d.join(format!("seed-{name}")), bytes).expect("write a seed");
}

/// The chunking prefix of `ftvm_fuzz::Chunking`: no size bytes (one piece), or these.
fn chunked(sizes: &[u8], stream: &[u8]) -> Vec<u8> {
    let mut v = vec![sizes.len() as u8];
    v.extend_from_slice(sizes);
    v.extend_from_slice(stream);
    v
}

fn log_seeds(dir: &Path) {
    let entries = [
        Entry::Start {
            wall_clock_unix_secs: 1_700_000_000,
        },
        Entry::Exit(ExitRecord {
            ordinal: 1,
            time_ns: 1000,
            kind: ExitKind::PioOut,
            rip: 0x10_0010,
            addr: 0x3f8,
            size: 1,
            value: u64::from(b'h'),
        }),
        Entry::SerialInput {
            ordinal: 1,
            bytes: b"ls\n".to_vec(),
        },
        Entry::Interrupt {
            ordinal: 2,
            vector: 0x20,
        },
        Entry::TimeSample {
            ordinal: 2,
            time_ns: 5_000_000,
        },
        Entry::Delta(Box::new(Delta {
            ordinal: 3,
            time_ns: 6_000_000,
            full: false,
            state_encoding: Default::default(),
            vcpu: vec![1, 2, 3],
            devices: vec![4, 5],
            pages: ft_log::pages::PageSet::Raw(vec![Page {
                gpa: 0x1000,
                data: vec![7; 64],
            }]),
        })),
        Entry::Delta(Box::new(Delta {
            ordinal: 3,
            time_ns: 6_000_000,
            full: false,
            state_encoding: Default::default(),
            vcpu: vec![1, 2, 3],
            devices: vec![4, 5],
            pages: xor_set(),
        })),
        Entry::Packet {
            ordinal: 3,
            data: vec![0xab; 8],
            outcome: PacketOutcome::Delivered { head: 3, len: 20 },
        },
        Entry::Nic {
            mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
        },
        Entry::BootSeed { seed: [7; 32] },
        Entry::DiskCompletion {
            ordinal: 4,
            request: 9,
            status: 0,
        },
        Entry::Point(Box::new(ft_log::EventPoint {
            ordinal: 4,
            time_ns: 7_000_000,
            rip: 0xffff_ffff_8100_1000,
            rflags: 0x246,
            gprs: [5; 16],
            branches: None,
        })),
        Entry::Shutdown {
            ordinal: 5,
            reason: "power off".into(),
            digest: Digest {
                memory_crc32: 1,
                vcpu_crc32: 2,
                devices_crc32: 3,
            },
        },
    ];
    let mut log = encode_header();
    for e in &entries {
        log.extend(encode_entry(e));
    }
    write(dir, "log_decoder", "whole", &chunked(&[], &log));
    write(
        dir,
        "log_decoder",
        "pieces",
        &chunked(&[0, 6, 2, 254], &log),
    );
    write(
        dir,
        "log_decoder",
        "header",
        &chunked(&[], &encode_header()),
    );
    // The replayer reads the same log, from a file or (bit 7 of byte 0) live, here cut
    // inside its last frame as when the primary dies mid-send.
    write(dir, "replay_reader", "file", &chunked(&[9, 200], &log));
    let mut live = chunked(&[0, 30], &log[..log.len() - 5]);
    live[0] |= 0x80;
    write(dir, "replay_reader", "live-cut", &live);

    // The channel carries the same log inside Log messages.
    let mut to_backup = encode_channel_header();
    to_backup.extend(encode_message(&ToBackup::Hello {
        vm_name: "vm".into(),
        epoch: 1,
        mem_mib: 64,
        console_offset: 0,
    }));
    to_backup.extend(encode_pages_messages(&[Page {
        gpa: 0x2000,
        data: vec![1; 32],
    }]));
    to_backup.extend(encode_message(&ToBackup::Machine {
        ordinal: 7,
        state: vec![9; 16],
    }));
    to_backup.extend(encode_log_messages(&log[..log.len() / 2]));
    to_backup.extend(encode_message(&ToBackup::Heartbeat));
    write(
        dir,
        "channel_decoder",
        "to-backup",
        &chunked(&[], &to_backup),
    );
    write(
        dir,
        "channel_decoder",
        "to-backup-pieces",
        &chunked(&[3, 0, 40], &to_backup),
    );
    let mut to_primary = encode_channel_header();
    for m in [
        ToPrimary::Hello {
            vm_name: "vm".into(),
        },
        ToPrimary::Ack { ordinal: 12 },
        ToPrimary::Heartbeat,
        ToPrimary::Resync,
    ] {
        to_primary.extend(encode_message(&m));
    }
    write(
        dir,
        "channel_decoder",
        "to-primary",
        &chunked(&[], &to_primary),
    );
}

fn gate_seeds(dir: &Path) {
    // Start offset 0, then: hold "ab" at ordinal 0, hold "c" one exit later, ack near the
    // current ordinal, go alone, hold, leave alone mode, hold, discard, rebase to 5.
    let mut s = vec![0u8; 8];
    s.extend([0x00, 2, b'a', b'b']);
    s.extend([0x40, 1, b'c']);
    s.extend([0x04]);
    s.extend([0x16]);
    s.extend([0x00, 1, b'd']);
    s.extend([0x06]);
    s.extend([0x40, 1, b'e']);
    s.extend([0x07]);
    s.extend([0x17, 5, 0, 0, 0, 0, 0, 0, 0]);
    write(dir, "output_gate", "ops", &s);
}

/// device index, encoding, state length, state, restore time, then a few accesses.
fn device_seed<S: Serialize>(dir: &Path, index: u8, name: &str, state: &S, accesses: &[u8]) {
    let json = serde_json::to_vec(state).expect("state as JSON");
    let bin = bincode::serde::encode_to_vec(state, bincode::config::standard())
        .expect("state as bincode");
    for (encoding, bytes, suffix) in [(0u8, json, "json"), (1, bin, "bincode")] {
        let mut s = vec![index, encoding];
        s.extend((bytes.len() as u16).to_le_bytes());
        s.extend(&bytes);
        s.extend(1_000_000_000u64.to_le_bytes());
        s.extend(accesses);
        write(dir, "device_states", &format!("{name}-{suffix}"), &s);
    }
}

fn device_seeds(dir: &Path) {
    let clock = FuzzClock::new();
    let lines = IrqLines::new();
    // A read at offset 0 and 1 of the first base, a write of 0x11 to offset 0, a step.
    let acc = [
        0x01, 0, 0, 0x01, 0, 1, 0x00, 0, 0, 0x11, 0, 0, 0, 0, 0, 0, 0, 0x02, 0xff, 0xff, 0x03,
    ];
    device_seed(dir, 0, "pic", &Pic::new().state(), &acc);
    device_seed(dir, 1, "pit", &Pit::new(clock.clone()).state(), &acc);
    let cmos = Cmos::new(clock.clone(), 1_700_000_000, 64 << 20);
    device_seed(dir, 2, "cmos", &cmos.state(), &acc);
    let serial = Serial::new(IrqLine::new(lines, 4), std::io::sink());
    device_seed(dir, 3, "serial", &serial.state(), &acc);
    device_seed(dir, 4, "i8042", &I8042::new().state(), &acc);
    device_seed(dir, 5, "sysctl", &SysCtl::new(64).state(), &acc);
    device_seed(dir, 6, "absent", &AbsentPorts::new().state(), &acc);
    // A count at the top of its range (it overflowed on the next access once).
    let max = AbsentPortsState { accesses: u64::MAX };
    device_seed(dir, 6, "absent-max", &max, &acc);
}

fn kv_seeds(dir: &Path) {
    let op = ClientOp {
        client: 7,
        seq: 1,
        op: Op::Put {
            key: "k".into(),
            value: "v".into(),
        },
    };
    let requests = [
        Request::Ping {
            server: "s1".into(),
            viewnum: 1,
        },
        Request::GetView,
        Request::Client(op.clone()),
        Request::Forward {
            view: 1,
            from: "s1".into(),
            msg_seq: 1,
            op,
        },
        Request::Transfer {
            view: 1,
            from: "s1".into(),
            msg_seq: 2,
            snapshot: Snapshot::default(),
        },
        Request::Status,
    ];
    let responses = [
        Response::View(ViewReply {
            view: View {
                num: 1,
                primary: Some("s1".into()),
                backup: None,
            },
            acked: true,
        }),
        Response::Ok,
        Response::Value("v".into()),
    ];
    let mut stream = Vec::new();
    let mut frame = |payload: Vec<u8>| {
        protocol::write_frame(&mut stream, &payload).expect("frame into a Vec");
    };
    for r in &requests {
        frame(protocol::encode(r).expect("encode a request"));
    }
    for r in &responses {
        frame(protocol::encode(r).expect("encode a response"));
    }
    write(dir, "kv_frames", "frames", &chunked(&[], &stream));
    write(
        dir,
        "kv_frames",
        "frames-pieces",
        &chunked(&[2, 0, 17], &stream),
    );
}

/// A split-queue descriptor: address, length, flags (1 NEXT, 2 WRITE), next.
fn desc(addr: u64, len: u32, flags: u16, next: u16) -> Vec<u8> {
    let mut d = addr.to_le_bytes().to_vec();
    d.extend(len.to_le_bytes());
    d.extend(flags.to_le_bytes());
    d.extend(next.to_le_bytes());
    d
}

/// virtio_queues' "write guest memory" operation.
fn poke(s: &mut Vec<u8>, addr: u16, bytes: &[u8]) {
    s.push(6);
    s.extend(addr.to_le_bytes());
    s.push(bytes.len() as u8);
    s.extend(bytes);
}

/// virtio_queues' bring-up operation: no extra features, then per queue its size and the
/// pages (addr >> 8) of its descriptor table, avail ring and used ring.
fn bring_up(s: &mut Vec<u8>, queues: &[[u8; 3]]) {
    s.push(4);
    s.extend(0u64.to_le_bytes());
    for q in queues {
        s.extend(16u16.to_le_bytes());
        s.extend(q);
    }
}

/// A powered-on machine's state as a snapshot holds it, with a manifest to match, as
/// `snapshot_loader` inputs: each flag setting, then a few port accesses.
fn snapshot_seeds(dir: &Path) {
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    let vcpu = ftvm::state::VcpuState {
        regs: Default::default(),
        sregs: Default::default(),
        fpu: kvm_bindings::kvm_fpu::default().into(),
        msrs: vec![],
        events: Default::default(),
        debugregs: Default::default(),
        xsave: Some(vec![0; 1024]),
        xcrs: Some(vec![(0, 1)]),
        ordinal: 42,
        halted: false,
    };
    let platform = ftvm::platform::Platform::new(
        FuzzClock::new(),
        8,
        1_700_000_000,
        Box::new(std::io::sink()),
        Arc::new(AtomicU64::new(0)),
        None,
    )
    .expect("a platform powers on");
    let state = ftvm::state::VmState {
        vcpu,
        platform: platform.state(),
        clock_ns: 1_000_000,
    };
    let state = serde_json::to_vec(&state).expect("encode a VM state");
    let manifest = serde_json::to_vec(&ftvm::snapshot::Manifest {
        format: ftvm::snapshot::FORMAT.into(),
        version: ftvm::snapshot::VERSION,
        mem_mib: 8,
        clock: ftvm::clock::ClockMode::Host,
        state: ftvm::snapshot::FileSum {
            bytes: state.len() as u64,
            crc32: crc32fast::hash(&state),
        },
        memory: ftvm::snapshot::FileSum {
            bytes: 8 << 20,
            crc32: 0,
        },
        disks: vec![],
    })
    .expect("encode a manifest");
    // Port accesses: read the PIC's mask (0x21), write COM1 (0x3f8), advance time.
    let ops = [0x00, 0x21, 0x00, 0x01, 0xf8, 0x03, b'x', 0x04, 0xff, 0x00];
    for (flags, name) in [(0u8, "as-is"), (1, "fixed"), (2, "good-memory")] {
        let mut input = vec![flags];
        for part in [&manifest[..], &state[..], &[][..]] {
            input.extend((part.len() as u16).to_le_bytes());
            input.extend(part);
        }
        input.extend(ops);
        write(dir, "snapshot_loader", name, &input);
    }
}

/// A view service and three servers brought to a view with a primary and a backup, and a
/// client's Put (its transfer and forward answered for real), as `kv_cores` steps.
fn kv_core_seeds(dir: &Path) {
    let mut s = vec![2u8]; // dead after 2 ticks
    s.extend([0, 0, 0, 0]); // A pings (restarted): view 1 (A)
    s.extend([0, 0, 1, 0]); // A acknowledges view 1
    s.extend([0, 0, 0, 1]); // B pings
    s.extend([1, 0]); // a tick: view 2 (A, B)
    s.extend([0, 0, 1, 0]); // A acknowledges view 2
    s.extend([2, 0, 2, 1]); // A and B learn the view
                            // A client's Put k=vvv on A: a transfer to B first (answered as B answers), then the
                            // forward.
    s.extend([4, 0, 0x11, b'k', 1, 1, 3, 2]);
    s.extend([4, 0, 0x11, b'k', 1, 1, 3, 2]);
    s.extend([1, 0, 1, 0, 1, 0]); // ticks: A and B silent, C never came
    write(dir, "kv_cores", "view-and-put", &s);
}

fn virtio_seeds(dir: &Path) {
    // Block: one read of sector 0 (header, 512-byte buffer, status byte), notified.
    let mut s = vec![0, 0];
    let mut table = desc(0x3000, 16, 1, 1);
    table.extend(desc(0x4000, 512, 3, 2));
    table.extend(desc(0x5000, 1, 2, 0));
    poke(&mut s, 0, &table);
    poke(&mut s, 0x3000, &[0; 16]);
    poke(&mut s, 0x1000, &[0, 0, 1, 0, 0, 0]);
    bring_up(&mut s, &[[0x00, 0x10, 0x20]]);
    s.extend([5, 0]);
    write(dir, "virtio_queues", "block-read", &s);

    // Net: a receive buffer filled by a delivered 60-byte frame, and one frame sent.
    let mut s = vec![1];
    poke(&mut s, 0, &desc(0x3000, 2048, 2, 0));
    poke(&mut s, 0x1000, &[0, 0, 1, 0, 0, 0]);
    poke(&mut s, 0x6000, &desc(0x7000, 72, 0, 0));
    poke(&mut s, 0x6100, &[0, 0, 1, 0, 0, 0]);
    poke(&mut s, 0x7000, &[0x11; 72]);
    bring_up(&mut s, &[[0x00, 0x10, 0x20], [0x60, 0x61, 0x62]]);
    s.push(7);
    s.extend(60u16.to_le_bytes());
    s.extend([5, 1]);
    write(dir, "virtio_queues", "net-rx-tx", &s);
}

/// A small XOR-encoded page set: a changed page, a zero page, an unchanged one.
fn xor_set() -> ft_log::pages::PageSet {
    use ft_log::pages::{Listing, PageEncoder, PageEncoding, PAGE_SIZE};
    let mut enc = PageEncoder::new(PageEncoding::XorLz4, vec![(0, 16 * PAGE_SIZE as u64)]);
    let old: Vec<u8> = (0..PAGE_SIZE).map(|i| i as u8).collect();
    for gpa in [0, 0x1000, 0x2000] {
        enc.seed(gpa, &old).expect("a page of the memory");
    }
    let mut new = old.clone();
    new[100..108].copy_from_slice(b"changed!");
    let mut batch = enc.batch(Listing::Dirty);
    batch.push(0, &new).expect("in order");
    batch.push(0x1000, &[0; PAGE_SIZE]).expect("in order");
    batch.push(0x2000, &old).expect("in order");
    batch.finish().expect("lz4 compresses")
}

fn page_codec_seeds(dir: &Path) {
    let cfg = bincode::config::standard();
    let set = bincode::serde::encode_to_vec(xor_set(), cfg).expect("plain data");
    for (name, mode) in [("round-trip", 0u8), ("decode", 1), ("decode-full", 2)] {
        let mut v = vec![mode];
        if mode == 0 {
            v.extend_from_slice(&[0x07, 0x00, 2, 10, 0, 0, 3, 5, 0x01, 0x80, 1, 0, 2, 200]);
        } else {
            v.extend_from_slice(&set);
        }
        write(dir, "page_codec", name, &v);
    }
}

fn main() {
    let dir = std::env::args().nth(1).expect("usage: gen_seeds DIR");
    let dir = Path::new(&dir);
    page_codec_seeds(dir);
    log_seeds(dir);
    gate_seeds(dir);
    device_seeds(dir);
    kv_seeds(dir);
    virtio_seeds(dir);
    snapshot_seeds(dir);
    kv_core_seeds(dir);
}
