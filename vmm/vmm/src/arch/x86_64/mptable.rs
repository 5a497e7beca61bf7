//! Intel MultiProcessor Specification 1.4 tables: how a kernel without ACPI
//! learns about more than one CPU, the I/O APIC and interrupt routing.
//! Placed in the last KiB of base memory, which the kernel scans and the
//! e820 map leaves out of RAM.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::convert::const_u32;

/// Guest-physical address of the MP floating pointer structure.
pub const MPTABLE_START: u64 = super::EBDA_START;
/// The configuration table follows the 16-byte floating pointer.
const TABLE_ADDR: u64 = MPTABLE_START + 16;
/// The same address in the floating pointer's 32-bit field.
const TABLE_ADDR_FIELD: u32 = const_u32(TABLE_ADDR);
/// The configuration table must end below 640 KiB.
const TABLE_END_MAX: u64 = 0xa0000;
/// Length of the configuration table header, before the entries.
const TABLE_HEADER_LEN: usize = 44;
const APIC_DEFAULT_BASE: u32 = 0xfee0_0000;
const IO_APIC_DEFAULT_BASE: u32 = 0xfec0_0000;
const APIC_VERSION: u8 = 0x14;
const IO_APIC_VERSION: u8 = 0x11;
/// GSIs 0..=23 are routed 1:1 to I/O APIC pins.
pub const IRQ_COUNT: u8 = 24;
/// Most vCPUs the MP table describes.
pub const MAX_CPUS: u8 = 32;

/// Why the MP table could not be written.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// A vCPU count outside `1..=MAX_CPUS`.
    #[error("{0} vCPUs requested, the MP table supports 1..={MAX_CPUS}")]
    CpuCount(u8),
    /// Writing the tables into guest memory failed.
    #[error("writing the MP table: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
    /// The configuration table (of this many bytes) would not end below 640 KiB.
    #[error("MP table of {0} bytes does not fit below 640 KiB")]
    TooLarge(usize),
}

fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// Builds the configuration table body (entries) for `cpus` processors.
fn entries(cpus: u8) -> (Vec<u8>, u16) {
    let mut e = Vec::new();
    let mut count = 0u16;
    for id in 0..cpus {
        // processor: type 0, APIC id, version, flags (enabled, BSP for 0),
        // signature (family 6), feature flags (FPU, APIC), reserved.
        e.push(0);
        e.push(id);
        e.push(APIC_VERSION);
        e.push(1 | if id == 0 { 2 } else { 0 });
        e.extend_from_slice(&0x600u32.to_le_bytes());
        e.extend_from_slice(&0x201u32.to_le_bytes());
        e.extend_from_slice(&[0; 8]);
        count += 1;
    }
    // bus 0: ISA
    e.push(1);
    e.push(0);
    e.extend_from_slice(b"ISA   ");
    count += 1;
    // I/O APIC, id after the CPUs
    let ioapic_id = cpus;
    e.push(2);
    e.push(ioapic_id);
    e.push(IO_APIC_VERSION);
    e.push(1);
    e.extend_from_slice(&IO_APIC_DEFAULT_BASE.to_le_bytes());
    count += 1;
    // I/O interrupts: bus IRQ n -> I/O APIC pin n (vectored INT, conforming).
    for irq in 0..IRQ_COUNT {
        e.extend_from_slice(&[3, 0, 0, 0, 0, irq, ioapic_id, irq]);
        count += 1;
    }
    // Local interrupts: LINT0 = ExtINT, LINT1 = NMI, on every local APIC.
    e.extend_from_slice(&[4, 3, 0, 0, 0, 0, 0xff, 0]);
    e.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0xff, 1]);
    count += 2;
    (e, count)
}

/// Writes the floating pointer and configuration table for `cpus` vCPUs.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<(), MpTableError> {
    if cpus == 0 || cpus > MAX_CPUS {
        return Err(MpTableError::CpuCount(cpus));
    }
    let (body, count) = entries(cpus);
    let table_len = TABLE_HEADER_LEN + body.len();
    if TABLE_ADDR + table_len as u64 > TABLE_END_MAX {
        return Err(MpTableError::TooLarge(table_len));
    }
    // Below 640 KiB, so the length fits its 16-bit field.
    let len_field = u16::try_from(table_len).map_err(|_| MpTableError::TooLarge(table_len))?;
    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&len_field.to_le_bytes());
    table.push(4); // spec revision 1.4
    table.push(0); // checksum, filled below
    table.extend_from_slice(b"III-VMM ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_DEFAULT_BASE.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended checksum
    table.push(0); // reserved
    table.extend_from_slice(&body);
    debug_assert_eq!(table.len(), table_len);
    table[7] = checksum(&table);

    let mut fp = Vec::with_capacity(16);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&TABLE_ADDR_FIELD.to_le_bytes());
    fp.push(1); // length in 16-byte units
    fp.push(4); // spec revision 1.4
    fp.push(0); // checksum, filled below
    fp.extend_from_slice(&[0; 5]); // feature bytes: table present, no default config
    fp[10] = checksum(&fp);

    mem.write_slice(&fp, GuestAddress(MPTABLE_START))?;
    mem.write_slice(&table, GuestAddress(TABLE_ADDR))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn tables_are_well_formed() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write(&mem, 4).unwrap();
        let mut fp = [0u8; 16];
        mem.read_slice(&mut fp, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(&fp), 0);
        let addr = u32::from_le_bytes(fp[4..8].try_into().unwrap()) as u64;
        let mut hdr = [0u8; 44];
        mem.read_slice(&mut hdr, GuestAddress(addr)).unwrap();
        assert_eq!(&hdr[..4], b"PCMP");
        let len = u16::from_le_bytes([hdr[4], hdr[5]]) as usize;
        let mut table = vec![0u8; len];
        mem.read_slice(&mut table, GuestAddress(addr)).unwrap();
        assert_eq!(sum(&table), 0);
        let count = u16::from_le_bytes([hdr[34], hdr[35]]);
        assert_eq!(count, 4 + 1 + 1 + 24 + 2);
        // Walk the entries: processors are 20 bytes, the rest 8.
        let (mut off, mut cpus, mut bsp) = (44, 0, 0);
        for _ in 0..count {
            match table[off] {
                0 => {
                    cpus += 1;
                    if table[off + 3] & 2 != 0 {
                        bsp += 1;
                    }
                    off += 20;
                }
                1..=4 => off += 8,
                t => panic!("bad entry type {t}"),
            }
        }
        assert_eq!((cpus, bsp, off), (4, 1, len));
    }

    #[test]
    fn cpu_count_limits() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        assert!(matches!(write(&mem, 0), Err(MpTableError::CpuCount(0))));
        assert!(matches!(
            write(&mem, MAX_CPUS + 1),
            Err(MpTableError::CpuCount(_))
        ));
        write(&mem, MAX_CPUS).unwrap();
    }
}
