//! Taking descriptor chains off a queue, checked before a device looks at them.
//!
//! virtio-queue walks the chain and stops on its own at a loop (its time-to-live is the
//! queue size), at an index outside the table, at an unreadable descriptor or when the
//! total length would pass 4 GiB; but it just ends the iteration. A chain whose last
//! descriptor still says NEXT was therefore cut short, and is refused here, as is a
//! chain whose buffers are not all inside guest memory.

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemory, Permissions};

use super::VirtioError;

/// One guest buffer of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Buffer {
    pub addr: GuestAddress,
    pub len: u32,
}

/// A checked chain: its device-readable buffers, then its device-writable ones.
#[derive(Debug, Default)]
pub(crate) struct Chain {
    pub head: u16,
    pub readable: Vec<Buffer>,
    pub writable: Vec<Buffer>,
}

impl Chain {
    pub fn readable_len(&self) -> u64 {
        total(&self.readable)
    }

    pub fn writable_len(&self) -> u64 {
        total(&self.writable)
    }
}

fn total(buffers: &[Buffer]) -> u64 {
    buffers.iter().map(|b| u64::from(b.len)).sum()
}

/// The next available chain of `queue` (number `index`), or `None` when the driver has
/// made nothing more available. Errors leave the queue position after the bad chain.
pub(crate) fn next_chain<M: GuestMemory>(
    queue: &mut Queue,
    index: usize,
    mem: &M,
) -> Result<Option<Chain>, VirtioError> {
    // The chain can hold at most a queue's worth of descriptors: that bounds the vectors
    // below whatever the driver wrote (an indirect table, never offered, could be longer).
    let limit = usize::from(queue.size());
    let mut avail = queue.iter(mem).map_err(|source| VirtioError::AvailRing {
        queue: index,
        source,
    })?;
    let Some(descriptors) = avail.next() else {
        return Ok(None);
    };
    let head = descriptors.head_index();
    let mut chain = Chain {
        head,
        ..Chain::default()
    };
    let mut count = 0;
    let mut cut_short = false;
    for d in descriptors {
        count += 1;
        if count > limit {
            return Err(VirtioError::ChainBroken { queue: index, head });
        }
        let in_memory = usize::try_from(d.len())
            .is_ok_and(|len| mem.check_range(d.addr(), len, Permissions::ReadWrite));
        if !in_memory {
            return Err(VirtioError::BufferOutsideMemory {
                queue: index,
                head,
                addr: d.addr().0,
                len: d.len(),
            });
        }
        let buffer = Buffer {
            addr: d.addr(),
            len: d.len(),
        };
        if d.is_write_only() {
            chain.writable.push(buffer);
        } else if chain.writable.is_empty() {
            chain.readable.push(buffer);
        } else {
            return Err(VirtioError::ReadableAfterWritable { queue: index, head });
        }
        cut_short = d.has_next();
    }
    if count == 0 {
        return Err(VirtioError::BadHead { queue: index, head });
    }
    if cut_short {
        return Err(VirtioError::ChainBroken { queue: index, head });
    }
    Ok(Some(chain))
}

/// Hands every available chain of `queue` to `handle`, which returns the bytes it wrote
/// into the chain, and puts the chain on the used ring. Returns how many it handled. The
/// available ring holds at most a queue's worth of new chains, which bounds the loop.
pub(crate) fn for_each_chain<M: GuestMemory>(
    queue: &mut Queue,
    index: usize,
    mem: &M,
    mut handle: impl FnMut(&Chain) -> Result<u32, VirtioError>,
) -> Result<usize, VirtioError> {
    let mut done = 0;
    for _ in 0..queue.size() {
        let Some(chain) = next_chain(queue, index, mem)? else {
            break;
        };
        let used = handle(&chain)?;
        queue
            .add_used(mem, chain.head, used)
            .map_err(|source| VirtioError::UsedRing {
                queue: index,
                source,
            })?;
        done += 1;
    }
    Ok(done)
}

/// Calls `f` with consecutive pieces (address, length) of the byte range
/// `skip..skip + len` of the buffers seen as one stream. Stops at the first error, or
/// early when the buffers end before the range does.
pub(crate) fn for_each_piece<E>(
    buffers: &[Buffer],
    mut skip: u64,
    mut len: u64,
    mut f: impl FnMut(GuestAddress, usize) -> Result<(), E>,
) -> Result<(), E> {
    for b in buffers {
        if len == 0 {
            break;
        }
        let blen = u64::from(b.len);
        if skip >= blen {
            skip -= blen;
            continue;
        }
        let n = (blen - skip).min(len);
        // The buffer was checked to lie in guest memory, so addr + skip cannot overflow,
        // and n <= u32::MAX fits usize.
        f(GuestAddress(b.addr.0 + skip), n as usize)?;
        len -= n;
        skip = 0;
    }
    Ok(())
}
