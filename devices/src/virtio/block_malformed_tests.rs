//! Garbage from the driver: each case leaves the device in NEEDS_RESET, never a panic.

use virtio_queue::mock::MockSplitQueue;
use vm_memory::GuestMemoryMmap;

use super::tests::*;
use super::*;
use crate::virtio::testing::*;
use crate::virtio::ISR_CONFIG;

/// Each malformed case: the device goes to NEEDS_RESET, tells the running driver with a
/// configuration interrupt, ignores the queue until reset, and works again after one.
fn expect_broken(
    case: &str,
    build: impl Fn(&GuestMemoryMmap, &MockSplitQueue<GuestMemoryMmap>),
    check: impl Fn(&VirtioError) -> bool,
) {
    let (mut f, lines, mem) = running(false);
    let q = queue(&mem);
    build(&mem, &q);
    notify(&mut f, 0);
    let err = f.process(&mem).expect_err(case);
    assert!(check(&err), "{case}: {err}");
    assert_ne!(status(&mut f) & 0x40, 0, "{case}: NEEDS_RESET");
    assert_eq!(f.failures(), 1);
    assert_eq!(lines.levels(), 1 << IRQ);
    assert_eq!(read_isr(&mut f) & ISR_CONFIG, ISR_CONFIG, "{case}");
    notify(&mut f, 0);
    assert_eq!(f.process(&mem).unwrap(), 0, "{case}: ignored until reset");
    // The driver resets and starts over with fresh rings.
    put(&mem, QUEUE_ADDR.0, &[0; 0x1000]);
    let q = queue(&mem);
    start(&mut f, FEATURES, &q);
    request(&mem, &q, VIRTIO_BLK_T_IN, 0, 512);
    notify(&mut f, 0);
    assert_eq!(f.process(&mem).unwrap(), 1, "{case}: works after reset");
    assert_eq!(status_byte(&mem), VIRTIO_BLK_S_OK);
}

#[test]
fn descriptor_loop() {
    expect_broken(
        "loop",
        |_, q| {
            offer(
                q,
                0,
                &[readable(HDR, 16, Some(1)), readable(DATA, 16, Some(0))],
                0,
            )
        },
        |e| matches!(e, VirtioError::ChainBroken { head: 0, .. }),
    );
}

#[test]
fn next_index_out_of_the_table() {
    expect_broken(
        "next out of range",
        |_, q| offer(q, 0, &[readable(HDR, 16, Some(500))], 0),
        |e| matches!(e, VirtioError::ChainBroken { .. }),
    );
}

#[test]
fn head_index_out_of_the_table() {
    expect_broken(
        "head out of range",
        |_, q| offer(q, 0, &[], 200),
        |e| matches!(e, VirtioError::BadHead { head: 200, .. }),
    );
}

#[test]
fn buffer_outside_guest_memory() {
    expect_broken(
        "buffer outside RAM",
        |_, q| {
            offer(
                q,
                0,
                &[
                    readable(HDR, 16, Some(1)),
                    writable(0x1_0000_0000, 512, Some(2)),
                    writable(STATUS, 1, None),
                ],
                0,
            )
        },
        |e| {
            matches!(
                e,
                VirtioError::BufferOutsideMemory {
                    addr: 0x1_0000_0000,
                    ..
                }
            )
        },
    );
}

#[test]
fn huge_length() {
    // 256 MiB in one buffer: inside the 4 GiB a chain may span, outside the 4 MiB of RAM.
    expect_broken(
        "huge length",
        |_, q| {
            let data = writable(DATA, 0x1000_0000, Some(2));
            offer(
                q,
                0,
                &[readable(HDR, 16, Some(1)), data, writable(STATUS, 1, None)],
                0,
            )
        },
        |e| {
            matches!(
                e,
                VirtioError::BufferOutsideMemory {
                    len: 0x1000_0000,
                    ..
                }
            )
        },
    );
}

#[test]
fn chain_longer_than_4_gib() {
    // virtio-queue ends the walk when the total passes u32::MAX: the chain is cut short.
    expect_broken(
        "total length overflow",
        |_, q| {
            let data = writable(DATA, u32::MAX, Some(2));
            offer(
                q,
                0,
                &[readable(HDR, 16, Some(1)), data, writable(STATUS, 1, None)],
                0,
            )
        },
        |e| matches!(e, VirtioError::ChainBroken { .. }),
    );
}

#[test]
fn chain_without_status_descriptor() {
    expect_broken(
        "no status",
        |mem, q| {
            request(mem, q, VIRTIO_BLK_T_OUT, 0, 512);
            offer(
                q,
                0,
                &[readable(HDR, 16, Some(1)), readable(DATA, 512, None)],
                0,
            );
        },
        |e| {
            matches!(
                e,
                VirtioError::ChainTooShort {
                    what: "status byte",
                    ..
                }
            )
        },
    );
}

#[test]
fn chain_without_header() {
    expect_broken(
        "no header",
        |_, q| {
            offer(
                q,
                0,
                &[readable(HDR, 8, Some(1)), writable(STATUS, 1, None)],
                0,
            )
        },
        |e| {
            matches!(
                e,
                VirtioError::ChainTooShort {
                    what: "request header",
                    ..
                }
            )
        },
    );
}

#[test]
fn readable_after_writable() {
    expect_broken(
        "readable after writable",
        |_, q| {
            offer(
                q,
                0,
                &[writable(STATUS, 1, Some(1)), readable(HDR, 16, None)],
                0,
            )
        },
        |e| matches!(e, VirtioError::ReadableAfterWritable { .. }),
    );
}

#[test]
fn available_index_too_far_ahead() {
    expect_broken(
        "avail idx",
        |_, q| q.avail().idx().store(QUEUE_LEN + 5),
        |e| matches!(e, VirtioError::AvailRing { .. }),
    );
}

#[test]
fn random_rings_never_panic() {
    let mut rng = crate::testing::XorShift::new(0x9e37_79b9_7f4a_7c15);
    for round in 0..200 {
        let (mut f, _lines, mem) = running(false);
        // Garbage over the descriptor table and both rings, then some plausible buffers.
        let mut junk = vec![0u8; 0x1000];
        junk.iter_mut().for_each(|b| *b = rng.next_u64() as u8);
        put(&mem, QUEUE_ADDR.0, &junk);
        if round % 2 == 0 {
            let q = queue(&mem);
            let len = (rng.next_u64() % 0x4000) as u32;
            let data = writable(DATA, len, Some((rng.next_u64() % 20) as u16));
            offer(
                &q,
                (rng.next_u64() % 14) as u16,
                &[readable(HDR, 16, Some(1)), data],
                0,
            );
        }
        for _ in 0..3 {
            notify(&mut f, 0);
            let _ = f.process(&mem);
        }
    }
}
