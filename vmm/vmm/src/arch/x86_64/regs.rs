//! vCPU state for a 64-bit direct boot.

use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuFd};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;
use crate::convert::const_u16;
use crate::hypervisor::HypervisorError;

fn call(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HypervisorError {
    move |e| HypervisorError::Call {
        op,
        source: std::io::Error::from_raw_os_error(e.errno()),
    }
}

// GDT: null, 64-bit code, data, TSS (flags words as in the descriptor).
const GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
/// The GDTR limit: the table's size in bytes, minus one.
const GDT_LIMIT: u16 = const_u16(GDT.len() * 8 - 1);

const fn gdt_entry(flags: u64, base: u64, limit: u64) -> u64 {
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0xf_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0xffff)
}

/// Decodes a segment from its 64-bit descriptor; deriving the fields from
/// the flags word instead gets the bit positions wrong and triple-faults.
fn segment(index: u16, desc: u64) -> kvm_segment {
    let base = ((desc >> 16) & 0xff_ffff) | ((desc >> 32) & 0xff00_0000);
    // The 20-bit limit: descriptor bits 0..16 and 48..52.
    let limit_raw = (desc & 0xffff) as u32 | ((desc >> 32) & 0xf_0000) as u32;
    let g = ((desc >> 55) & 1) as u8;
    kvm_segment {
        base,
        // With G set the limit counts 4 KiB pages.
        limit: if g == 1 {
            (limit_raw << 12) | 0xfff
        } else {
            limit_raw
        },
        selector: index * 8,
        type_: ((desc >> 40) & 0xf) as u8,
        s: ((desc >> 44) & 1) as u8,
        dpl: ((desc >> 45) & 3) as u8,
        present: ((desc >> 47) & 1) as u8,
        avl: ((desc >> 52) & 1) as u8,
        l: ((desc >> 53) & 1) as u8,
        db: ((desc >> 54) & 1) as u8,
        g,
        unusable: 0,
        padding: 0,
    }
}

const X86_CR0_PE: u64 = 1;
const X86_CR0_NW: u64 = 1 << 29;
const X86_CR0_CD: u64 = 1 << 30;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// Identity maps the first 1 GiB with 2 MiB pages.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<(), vm_memory::GuestMemoryError> {
    mem.write_obj(PDPT_ADDR | 0x03, GuestAddress(PML4_ADDR))?;
    mem.write_obj(PD_ADDR | 0x03, GuestAddress(PDPT_ADDR))?;
    for i in 0..512u64 {
        // present | writable | page size (2 MiB)
        mem.write_obj((i << 21) | 0x83, GuestAddress(PD_ADDR + i * 8))?;
    }
    Ok(())
}

fn setup_cpuid(kvm: &Kvm, vcpu: &VcpuFd, id: u8) -> Result<(), HypervisorError> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(call("KVM_GET_SUPPORTED_CPUID"))?;
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                // KVM does not set the hypervisor bit; without it the guest
                // ignores the KVM leaves and gets no kvm-clock.
                e.ecx |= 1 << 31;
                e.ebx = (e.ebx & 0x00ff_ffff) | (u32::from(id) << 24);
            }
            0xb => e.edx = u32::from(id),
            _ => {}
        }
    }
    vcpu.set_cpuid2(&cpuid).map_err(call("KVM_SET_CPUID2"))
}

fn setup_msrs(vcpu: &VcpuFd) -> Result<(), HypervisorError> {
    let entry = |index, data| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    };
    let entries = [
        entry(0x174, 0),             // SYSENTER_CS
        entry(0x175, 0),             // SYSENTER_ESP
        entry(0x176, 0),             // SYSENTER_EIP
        entry(0xc000_0081, 0),       // STAR
        entry(0xc000_0082, 0),       // LSTAR
        entry(0xc000_0083, 0),       // CSTAR
        entry(0xc000_0084, 0),       // SYSCALL_MASK
        entry(0xc000_0102, 0),       // KERNEL_GS_BASE
        entry(0x10, 0),              // TSC
        entry(0x1a0, 1),             // MISC_ENABLE: fast strings
        entry(0x2ff, (1 << 11) | 6), // MTRRdefType: enabled, write-back
    ];
    let msrs = Msrs::from_entries(&entries).map_err(|_| HypervisorError::Call {
        op: "building MSR list",
        source: std::io::Error::from_raw_os_error(libc::E2BIG),
    })?;
    let n = vcpu.set_msrs(&msrs).map_err(call("KVM_SET_MSRS"))?;
    if n != entries.len() {
        return Err(HypervisorError::Call {
            op: "KVM_SET_MSRS (not all accepted)",
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        });
    }
    Ok(())
}

/// State every vCPU needs: CPUID (with its APIC id), MSRs, FPU and the
/// local APIC in virtual-wire mode. Application processors then wait for
/// the boot CPU's INIT/SIPI in the in-kernel irqchip.
pub fn setup_vcpu(kvm: &Kvm, vcpu: &VcpuFd, id: u8) -> Result<(), HypervisorError> {
    setup_cpuid(kvm, vcpu, id)?;
    setup_msrs(vcpu)?;
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(call("KVM_SET_FPU"))?;
    // LINT0 = ExtINT (the PIC), LINT1 = NMI: virtual-wire mode.
    let mut lapic = vcpu.get_lapic().map_err(call("KVM_GET_LAPIC"))?;
    set_lvt(&mut lapic.regs, 0x350, 0b111);
    set_lvt(&mut lapic.regs, 0x360, 0b100);
    vcpu.set_lapic(&lapic).map_err(call("KVM_SET_LAPIC"))
}

/// Puts the boot vCPU in 64-bit mode at `entry` with the zero page in RSI.
pub fn setup_bsp_registers(
    vcpu: &VcpuFd,
    entry: u64,
    mem: &GuestMemoryMmap,
) -> Result<(), HypervisorError> {
    let mem_err = |e: vm_memory::GuestMemoryError| HypervisorError::Call {
        op: "writing boot tables",
        source: std::io::Error::other(e.to_string()),
    };
    for (i, d) in GDT.iter().enumerate() {
        mem.write_obj(*d, GuestAddress(GDT_ADDR + i as u64 * 8))
            .map_err(mem_err)?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(mem_err)?;
    write_page_tables(mem).map_err(mem_err)?;

    let mut sregs = vcpu.get_sregs().map_err(call("KVM_GET_SREGS"))?;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 7;
    let code = segment(1, GDT[1]);
    let data = segment(2, GDT[2]);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(3, GDT[3]);
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= X86_CR4_PAE;
    // The reset CR0 has CD|NW set; keeping them runs the guest uncached.
    sregs.cr0 = (sregs.cr0 & !(X86_CR0_CD | X86_CR0_NW)) | X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).map_err(call("KVM_SET_SREGS"))?;

    let regs = kvm_regs {
        rflags: 2,
        rip: entry,
        rsp: BOOT_STACK,
        rbp: BOOT_STACK,
        rsi: ZERO_PAGE,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(call("KVM_SET_REGS"))
}

fn set_lvt(regs: &mut [libc::c_char; 1024], offset: usize, mode: u32) {
    let mut b = [0u8; 4];
    for (i, x) in b.iter_mut().enumerate() {
        *x = regs[offset + i] as u8;
    }
    let v = (u32::from_le_bytes(b) & !0x700) | (mode << 8);
    for (i, x) in v.to_le_bytes().iter().enumerate() {
        regs[offset + i] = *x as libc::c_char;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gdt_segments_decode() {
        let cs = segment(1, GDT[1]);
        assert_eq!(
            (cs.selector, cs.type_, cs.s, cs.present, cs.l, cs.db, cs.g),
            (8, 0xb, 1, 1, 1, 0, 1)
        );
        assert_eq!(cs.limit, 0xffff_ffff);
        let ds = segment(2, GDT[2]);
        assert_eq!((ds.type_, ds.l, ds.db), (0x3, 0, 1));
        let tr = segment(3, GDT[3]);
        assert_eq!((tr.selector, tr.type_, tr.s, tr.present), (24, 0xb, 0, 1));
    }

    #[test]
    fn page_tables_identity_map_first_gib() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap();
        write_page_tables(&mem).unwrap();
        let pml4: u64 = mem.read_obj(GuestAddress(PML4_ADDR)).unwrap();
        assert_eq!(pml4 & !0xfff, PDPT_ADDR);
        let pd511: u64 = mem.read_obj(GuestAddress(PD_ADDR + 511 * 8)).unwrap();
        assert_eq!(pd511 & !0x1fffff, 511 << 21);
        assert_eq!(pd511 & 0x83, 0x83);
    }
}
