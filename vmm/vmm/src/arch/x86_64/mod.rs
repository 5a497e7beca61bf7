//! x86_64 direct kernel boot: the kernel starts in 64-bit long mode at its
//! entry point with a zero page (Linux boot protocol) and identity-mapped
//! page tables, as if a bootloader had done the work.

pub mod mptable;
mod regs;

pub use regs::{setup_bsp_registers, setup_vcpu};

use std::fs::File;
use std::path::Path;

use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{self, bzimage::BzImage, elf::Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::convert::const_u32;

// Guest-physical layout of the boot structures (all below 1 MiB).
/// Guest-physical address of the GDT (null, code, data, TSS descriptors).
pub const GDT_ADDR: u64 = 0x500;
/// Guest-physical address of the (empty) IDT.
pub const IDT_ADDR: u64 = 0x520;
/// Guest-physical address of the zero page (`boot_params`), passed in RSI.
pub const ZERO_PAGE: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK: u64 = 0x8ff0;
/// Guest-physical address of the PML4 page table.
pub const PML4_ADDR: u64 = 0x9000;
/// Guest-physical address of the page-directory-pointer table.
pub const PDPT_ADDR: u64 = 0xa000;
/// Guest-physical address of the page directory (2 MiB pages for the first GiB).
pub const PD_ADDR: u64 = 0xb000;
/// Guest-physical address of the kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Most bytes the kernel command line may hold (the `Cmdline` capacity).
pub const CMDLINE_MAX: usize = 2048;
/// Start of the extended BIOS data area: base RAM ends here (the MP table lives above).
pub const EBDA_START: u64 = 0x9fc00;
/// Start of high memory (1 MiB), where the kernel is loaded.
pub const HIMEM_START: u64 = 0x10_0000;
/// virtio-mmio windows start here; RAM must end below it.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// First GSI for virtio devices (serial is 4).
pub const VIRTIO_GSI_BASE: u32 = 5;
/// How many virtio devices have an interrupt line: GSIs from
/// [`VIRTIO_GSI_BASE`] up to the last I/O APIC pin.
pub const MAX_VIRTIO_DEVICES: u32 = mptable::IRQ_COUNT as u32 - VIRTIO_GSI_BASE;

const E820_RAM: u32 = 1;
/// The e820 map: base memory below the EBDA, and RAM from 1 MiB up.
const E820_ENTRIES: u8 = 2;
/// The zero page's 32-bit field for the command line's address.
const CMDLINE_PTR: u32 = const_u32(CMDLINE_ADDR);

/// Why the kernel, initrd or boot parameters could not be put in guest memory.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened.
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        /// The kernel path as given.
        path: String,
        /// Why opening failed.
        source: std::io::Error,
    },
    /// Neither the ELF nor the bzImage loader accepts the kernel file.
    #[error("{path} is neither an ELF vmlinux nor a bzImage the loader accepts ({elf}; {bz})")]
    LoadKernel {
        /// The kernel path as given.
        path: String,
        /// The ELF loader's complaint.
        elf: loader::Error,
        /// The bzImage loader's complaint.
        bz: loader::Error,
    },
    /// The initrd file cannot be read.
    #[error("cannot read initrd {path}: {source}")]
    Initrd {
        /// The initrd path as given.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The initrd does not fit between the kernel area and the top of RAM.
    #[error("initrd of {size} bytes does not fit in guest memory")]
    InitrdTooLarge {
        /// The initrd's size in bytes.
        size: usize,
    },
    /// A value for a 32-bit field of the zero page does not fit it.
    #[error("boot parameter {field} = {value:#x} does not fit the zero page's 32-bit field")]
    BootParam {
        /// The zero-page field.
        field: &'static str,
        /// The value that was to go in it.
        value: u64,
    },
    /// The command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    /// Writing the initrd or the zero page into guest memory failed.
    #[error("writing boot data into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// Writing the command line into guest memory failed.
    #[error("loading the command line: {0}")]
    LoadCmdline(loader::Error),
}

/// Result of loading the kernel.
pub struct LoadedKernel {
    /// Guest-physical address of the 64-bit entry point.
    pub entry: u64,
    /// The bzImage's setup header, copied into the zero page; `None` for an ELF.
    pub setup_header: Option<setup_header>,
}

/// Loads an ELF `vmlinux` (preferred: no in-guest decompression) or a bzImage.
pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let open = || {
        File::open(path).map_err(|source| BootError::OpenKernel {
            path: path.display().to_string(),
            source,
        })
    };
    let elf = match Elf::load(mem, None, &mut open()?, Some(GuestAddress(HIMEM_START))) {
        Ok(r) => {
            return Ok(LoadedKernel {
                entry: r.kernel_load.0,
                setup_header: None,
            })
        }
        Err(e) => e,
    };
    match BzImage::load(mem, None, &mut open()?, Some(GuestAddress(HIMEM_START))) {
        // The 64-bit entry point sits 0x200 past the protected-mode code start.
        Ok(r) => Ok(LoadedKernel {
            entry: r.kernel_load.0 + 0x200,
            setup_header: r.setup_header,
        }),
        Err(bz) => Err(BootError::LoadKernel {
            path: path.display().to_string(),
            elf,
            bz,
        }),
    }
}

/// Copies the initrd to the top of RAM (page aligned); returns (addr, size).
pub fn load_initrd(mem: &GuestMemoryMmap, path: &Path) -> Result<(u64, usize), BootError> {
    let data = std::fs::read(path).map_err(|source| BootError::Initrd {
        path: path.display().to_string(),
        source,
    })?;
    let end = mem.last_addr().0 + 1;
    let addr = end
        .checked_sub(data.len() as u64)
        .map(|a| a & !0xfff)
        .filter(|&a| a >= HIMEM_START + (64 << 20))
        .ok_or(BootError::InitrdTooLarge { size: data.len() })?;
    mem.write_slice(&data, GuestAddress(addr))?;
    Ok((addr, data.len()))
}

/// Writes the command line and the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    cmdline: &Cmdline,
    kernel: &LoadedKernel,
    initrd: Option<(u64, usize)>,
) -> Result<(), BootError> {
    loader::load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(BootError::LoadCmdline)?;
    let mut params = boot_params::default();
    if let Some(h) = kernel.setup_header {
        params.hdr = h;
    }
    params.hdr.type_of_loader = 0xff; // "undefined" bootloader
    params.hdr.boot_flag = 0xaa55;
    params.hdr.header = 0x5372_6448; // "HdrS"
    params.hdr.kernel_alignment = 0x100_0000;
    params.hdr.cmd_line_ptr = CMDLINE_PTR;
    let cmdline_len = cmdline.as_cstring().map_or(0, |c| c.as_bytes().len());
    params.hdr.cmdline_size = boot_u32("cmdline_size", cmdline_len as u64)?;
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = boot_u32("ramdisk_image", addr)?;
        params.hdr.ramdisk_size = boot_u32("ramdisk_size", size as u64)?;
    }
    let end = mem.last_addr().0 + 1;
    let e820: [(u64, u64); E820_ENTRIES as usize] =
        [(0, EBDA_START), (HIMEM_START, end - HIMEM_START)];
    for (i, (addr, size)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = E820_ENTRIES;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))?;
    Ok(())
}

/// `value` for the 32-bit zero-page field `field`. RAM ends below 4 GiB
/// ([`MMIO_BASE`]) and the command line is at most [`CMDLINE_MAX`] bytes, so
/// this only fails for a caller that passes values from elsewhere.
fn boot_u32(field: &'static str, value: u64) -> Result<u32, BootError> {
    u32::try_from(value).map_err(|_| BootError::BootParam { field, value })
}

/// The base command line: serial console for the kernel log only, reset as
/// power off, no PCI/ACPI probing, and the i8042 shortcuts that avoid probes
/// of a keyboard controller we only pretend to have.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off nomodule 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd";
