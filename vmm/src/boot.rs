//! Loading a kernel (ELF `vmlinux` or bzImage), its initrd and command line, and the Linux
//! zero page, following the x86 64-bit boot protocol.

use std::fs::File;
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::layout;

/// Why the kernel, initrd, command line or zero page could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel image could not be opened, or the path is a directory.
    #[error("cannot open kernel {path}")]
    OpenKernel {
        /// Path given for the kernel.
        path: PathBuf,
        /// The I/O error from opening it.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither an ELF vmlinux nor a bzImage, or is malformed.
    #[error("{path} is not a kernel: {reason}")]
    NotAKernel {
        /// Path given for the kernel.
        path: PathBuf,
        /// The loader's explanation.
        reason: String,
    },
    /// The kernel image is valid but cannot be placed in the guest's memory.
    #[error("cannot load kernel {path} into {mem_mib} MiB of guest memory: {reason}")]
    KernelDoesNotFit {
        /// Path given for the kernel.
        path: PathBuf,
        /// Guest memory size, in MiB.
        mem_mib: u64,
        /// The loader's explanation.
        reason: String,
    },
    /// The initrd file could not be read.
    #[error("cannot read initrd {path}")]
    ReadInitrd {
        /// Path given for the initrd.
        path: PathBuf,
        /// The I/O error from reading it.
        #[source]
        source: std::io::Error,
    },
    /// No page-aligned place above the kernel and below the limit is large enough for the initrd.
    #[error("initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} above the kernel")]
    InitrdDoesNotFit {
        /// Path given for the initrd.
        path: PathBuf,
        /// Size of the initrd, in bytes.
        size: u64,
        /// Guest physical address the initrd must end below.
        limit: u64,
    },
    /// The command line, without its NUL terminator, does not fit in the space reserved for it.
    #[error("kernel command line is {len} bytes; the limit is {max}")]
    CmdlineTooLong {
        /// Length of the given command line, in bytes.
        len: usize,
        /// Longest command line accepted, in bytes.
        max: usize,
    },
    /// The command line contains a NUL byte, which would end it early.
    #[error("kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Writing the kernel, initrd, command line or zero page to guest memory failed.
    #[error("cannot write boot structures to guest memory")]
    GuestMemory(#[from] vm_memory::GuestMemoryError),
    /// The host's random source gave no seed for the kernel.
    #[error("cannot draw the kernel's random seed from the host")]
    Seed(#[source] getrandom::Error),
}

/// What the vCPU needs to start the kernel.
#[derive(Debug, Clone, Copy)]
pub struct BootInfo {
    /// 64-bit entry point.
    pub entry: GuestAddress,
    /// Which image format the kernel was loaded from.
    pub kind: KernelKind,
}

/// The format of a kernel image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KernelKind {
    /// An uncompressed ELF `vmlinux`.
    Elf,
    /// A compressed bzImage with a setup header.
    BzImage,
}

/// Open the kernel image, so a bad path is reported before anything else is set up.
pub fn open_kernel(path: &Path) -> Result<File, BootError> {
    let open_err = |source| BootError::OpenKernel {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    if file.metadata().map_err(open_err)?.is_dir() {
        return Err(open_err(std::io::Error::new(
            std::io::ErrorKind::IsADirectory,
            "is a directory",
        )));
    }
    Ok(file)
}

/// Read the initrd image.
pub fn read_initrd(path: &Path) -> Result<Vec<u8>, BootError> {
    std::fs::read(path).map_err(|source| BootError::ReadInitrd {
        path: path.to_owned(),
        source,
    })
}

/// What the loader found: entry point, the kernel's own setup header (bzImage) and where
/// the loaded image ends.
pub struct LoadedKernel {
    /// Entry point and image format.
    pub info: BootInfo,
    /// The setup header from the image, copied into the zero page; `None` if it has none.
    pub header: Option<linux_loader::loader::bootparam::setup_header>,
    /// Guest physical address just past the loaded kernel.
    pub end: u64,
}

/// Load the kernel image: ELF first, then bzImage.
pub fn load_kernel(
    mem: &GuestMemoryMmap,
    mut file: File,
    path: &Path,
    mem_mib: u64,
) -> Result<LoadedKernel, BootError> {
    let himem = Some(GuestAddress(layout::HIMEM_START));
    let doesnt_fit = |reason: String| BootError::KernelDoesNotFit {
        path: path.to_owned(),
        mem_mib,
        reason,
    };
    use linux_loader::loader::Error as LoaderError;
    match Elf::load(mem, None, &mut file, himem) {
        Ok(r) => {
            let end = r.kernel_load.raw_value().max(r.kernel_end);
            return Ok(LoadedKernel {
                info: BootInfo {
                    entry: r.kernel_load,
                    kind: KernelKind::Elf,
                },
                header: r.setup_header,
                end,
            });
        }
        Err(LoaderError::Elf(linux_loader::loader::elf::Error::InvalidElfMagicNumber)) => {}
        Err(e) => return Err(classify(path, e, doesnt_fit)),
    }
    match BzImage::load(mem, None, &mut file, himem) {
        Ok(r) => Ok(LoadedKernel {
            info: BootInfo {
                // The 64-bit entry point sits 0x200 bytes into the protected-mode code.
                entry: r.kernel_load.unchecked_add(0x200),
                kind: KernelKind::BzImage,
            },
            header: r.setup_header,
            end: r.kernel_end,
        }),
        Err(LoaderError::Bzimage(linux_loader::loader::bzimage::Error::InvalidBzImage))
        | Err(LoaderError::Bzimage(linux_loader::loader::bzimage::Error::ReadBzImageHeader)) => {
            Err(BootError::NotAKernel {
                path: path.to_owned(),
                reason: "neither an ELF vmlinux nor a bzImage (no ELF magic, no HdrS setup header)"
                    .into(),
            })
        }
        Err(e) => Err(classify(path, e, doesnt_fit)),
    }
}

/// Errors past the magic number: a malformed image, or one that does not fit in memory.
fn classify(
    path: &Path,
    e: linux_loader::loader::Error,
    doesnt_fit: impl Fn(String) -> BootError,
) -> BootError {
    use linux_loader::loader::elf::Error as E;
    use linux_loader::loader::Error as L;
    match e {
        L::Elf(E::ReadKernelImage) | L::Elf(E::InvalidProgramHeaderAddress) => {
            doesnt_fit(e.to_string())
        }
        L::Bzimage(linux_loader::loader::bzimage::Error::ReadBzImageCompressedKernel) => {
            doesnt_fit(e.to_string())
        }
        other => BootError::NotAKernel {
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Load the initrd as high as the kernel allows, page aligned. Returns (address, size).
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    data: &[u8],
    path: &Path,
    kernel_end: u64,
    initrd_addr_max: u64,
) -> Result<(u64, u64), BootError> {
    let size = data.len() as u64;
    let ram_top = mem.last_addr().raw_value().min(layout::MMIO_HOLE_START - 1) + 1;
    let limit = ram_top.min(initrd_addr_max.saturating_add(1));
    let too_big = || BootError::InitrdDoesNotFit {
        path: path.to_owned(),
        size,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_big)? & !0xfff;
    if addr < kernel_end.max(layout::HIMEM_START) {
        return Err(too_big());
    }
    mem.write_slice(data, GuestAddress(addr))?;
    Ok((addr, size))
}

/// Write the command line (NUL terminated) at its fixed address.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str) -> Result<(), BootError> {
    if cmdline.as_bytes().contains(&0) {
        return Err(BootError::CmdlineNul);
    }
    if cmdline.len() >= layout::CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong {
            len: cmdline.len(),
            max: layout::CMDLINE_MAX - 1,
        });
    }
    let mut bytes = cmdline.as_bytes().to_vec();
    bytes.push(0);
    mem.write_slice(&bytes, GuestAddress(layout::CMDLINE_START))?;
    Ok(())
}

/// The zero page as ByteValued (it is a packed plain-data struct).
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);

// SAFETY: boot_params is a #[repr(C, packed)] struct of integers and arrays of integers
// generated from the kernel's header: every bit pattern is valid and it has no padding.
unsafe impl ByteValued for ZeroPage {}

/// 32 bytes from the host's random source, for [`write_rng_seed`].
pub fn random_seed() -> Result<[u8; 32], BootError> {
    let mut seed = [0u8; 32];
    getrandom::fill(&mut seed).map_err(BootError::Seed)?;
    Ok(seed)
}

/// Write `seed` as the kernel's one `setup_data` entry (`SETUP_RNG_SEED`, at a fixed
/// address); returns that address for the zero page. A kernel that trusts its boot
/// loader's seed (Linux's default since 5.19) starts with its random generator ready,
/// instead of re-extracting an unseeded pool at every request of the early boot, which in
/// kernel code run by an emulator costs tens of seconds.
pub fn write_rng_seed(mem: &GuestMemoryMmap, seed: &[u8; 32]) -> Result<u64, BootError> {
    // struct setup_data { u64 next; u32 type; u32 len; u8 data[]; }
    let mut blob = Vec::with_capacity(16 + seed.len());
    blob.extend_from_slice(&0u64.to_le_bytes());
    blob.extend_from_slice(&linux_loader::loader::bootparam::SETUP_RNG_SEED.to_le_bytes());
    blob.extend_from_slice(&(seed.len() as u32).to_le_bytes());
    blob.extend_from_slice(seed);
    mem.write_slice(&blob, GuestAddress(layout::SETUP_DATA_START))?;
    Ok(layout::SETUP_DATA_START)
}

/// Write the zero page: setup header, command line and initrd pointers, e820 map, and
/// the list of `setup_data` entries (at `setup_data`, if any).
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    header: Option<linux_loader::loader::bootparam::setup_header>,
    initrd: Option<(u64, u64)>,
    cmdline_len: usize,
    setup_data: Option<u64>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = header {
        params.hdr = hdr;
    }
    params.hdr.setup_data = setup_data.unwrap_or(0);
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.type_of_loader = 0xff; // undefined boot loader
    if params.hdr.kernel_alignment == 0 {
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.cmd_line_ptr = layout::CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let mut entries = vec![(0u64, layout::EBDA_START, E820_RAM)];
    for region in mem.iter() {
        use vm_memory::GuestMemoryRegion;
        let start = region.start_addr().raw_value().max(layout::HIMEM_START);
        let end = region.last_addr().raw_value() + 1;
        if end > start {
            entries.push((start, end - start, E820_RAM));
        }
    }
    for (i, (addr, size, type_)) in entries.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = entries.len() as u8;
    mem.write_obj(ZeroPage(params), GuestAddress(layout::ZERO_PAGE_START))?;
    Ok(())
}

const E820_RAM: u32 = 1;

/// The highest address the initrd may end at, from the kernel's header (bzImage) or the
/// protocol's default for kernels without one.
pub fn initrd_addr_max(header: Option<&linux_loader::loader::bootparam::setup_header>) -> u64 {
    match header.map(|h| h.initrd_addr_max) {
        Some(max) if max != 0 => u64::from(max),
        _ => 0x37ff_ffff,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    #[test]
    fn the_seed_is_one_rng_seed_entry_the_zero_page_points_to() {
        let mem = memory();
        let seed = [0xa5u8; 32];
        let at = write_rng_seed(&mem, &seed).unwrap();
        write_zero_page(&mem, None, None, 10, Some(at)).unwrap();
        let params: ZeroPage = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        let pointer = params.0.hdr.setup_data;
        assert_eq!(pointer, at);
        let mut blob = [0u8; 48];
        mem.read_slice(&mut blob, GuestAddress(at)).unwrap();
        assert_eq!(
            u64::from_le_bytes(blob[0..8].try_into().unwrap()),
            0,
            "last entry"
        );
        assert_eq!(
            u32::from_le_bytes(blob[8..12].try_into().unwrap()),
            9,
            "SETUP_RNG_SEED"
        );
        assert_eq!(u32::from_le_bytes(blob[12..16].try_into().unwrap()), 32);
        assert_eq!(&blob[16..], &seed);
    }

    #[test]
    fn without_a_seed_the_zero_page_has_no_setup_data() {
        let mem = memory();
        write_zero_page(&mem, None, None, 10, None).unwrap();
        let params: ZeroPage = mem.read_obj(GuestAddress(layout::ZERO_PAGE_START)).unwrap();
        let pointer = params.0.hdr.setup_data;
        assert_eq!(pointer, 0);
    }

    #[test]
    fn seeds_differ_between_draws() {
        assert_ne!(random_seed().unwrap(), random_seed().unwrap());
    }
}
