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

// Guest-physical layout of the boot structures (all below 1 MiB).
pub const GDT_ADDR: u64 = 0x500;
pub const IDT_ADDR: u64 = 0x520;
pub const ZERO_PAGE: u64 = 0x7000;
pub const BOOT_STACK: u64 = 0x8ff0;
pub const PML4_ADDR: u64 = 0x9000;
pub const PDPT_ADDR: u64 = 0xa000;
pub const PD_ADDR: u64 = 0xb000;
pub const CMDLINE_ADDR: u64 = 0x20000;
pub const CMDLINE_MAX: usize = 2048;
pub const EBDA_START: u64 = 0x9fc00;
pub const HIMEM_START: u64 = 0x10_0000;
/// virtio-mmio windows start here; RAM must end below it.
pub const MMIO_BASE: u64 = 0xd000_0000;
/// First GSI for virtio devices (serial is 4).
pub const VIRTIO_GSI_BASE: u32 = 5;

const E820_RAM: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} is neither an ELF vmlinux nor a bzImage the loader accepts ({elf}; {bz})")]
    LoadKernel {
        path: String,
        elf: loader::Error,
        bz: loader::Error,
    },
    #[error("cannot read initrd {path}: {source}")]
    Initrd {
        path: String,
        source: std::io::Error,
    },
    #[error("initrd of {size} bytes does not fit in guest memory")]
    InitrdTooLarge { size: usize },
    #[error("kernel command line: {0}")]
    Cmdline(#[from] linux_loader::cmdline::Error),
    #[error("writing boot data into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("loading the command line: {0}")]
    LoadCmdline(loader::Error),
}

/// Result of loading the kernel.
pub struct LoadedKernel {
    pub entry: u64,
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
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len() as u32)
        .unwrap_or(0);
    if let Some((addr, size)) = initrd {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let end = mem.last_addr().0 + 1;
    let e820 = [(0, EBDA_START), (HIMEM_START, end - HIMEM_START)];
    for (i, (addr, size)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: E820_RAM,
        };
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE))?;
    Ok(())
}

/// The base command line: serial console for the kernel log only, reset as
/// power off, no PCI/ACPI probing, and the i8042 shortcuts that avoid probes
/// of a keyboard controller we only pretend to have.
pub const BASE_CMDLINE: &str =
    "console=ttyS0 reboot=k panic=-1 pci=off nomodule 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd";
