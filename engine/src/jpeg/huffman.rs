//! Huffman tables built for speed: decoding by table lookup, encoding by one combined write.

use super::markers::invalid;
use super::tables::HuffmanSpec;
use crate::error::Result;

/// Bits looked at at once. 10 bits resolve almost every code of camera JPEGs in one step and keep
/// a table at 4 KiB, well inside L1 with four tables live.
pub(crate) const LOOKAHEAD: u32 = 10;
const SIZE: usize = 1 << LOOKAHEAD;

/// Bits the pair table looks at: room for two short coefficients, or one and the block's end.
pub(crate) const PAIR_BITS: u32 = 11;
const PAIR_SIZE: usize = 1 << PAIR_BITS;
/// A pair entry's fields: bits used, then where its coefficients go relative to the next
/// position, how far the position advances, and whether the block ended.
pub(crate) const PAIR_FIRST_SHIFT: u32 = 5;
pub(crate) const PAIR_SECOND_SHIFT: u32 = 11;
pub(crate) const PAIR_ADVANCE_SHIFT: u32 = 17;
pub(crate) const PAIR_ENDED: u64 = 1 << 23;

/// Bits the skipping table looks at: a chroma block's few small coefficients and its end often
/// fit together, and 4,096 two-byte entries still sit in L1.
pub(crate) const SKIP_BITS: u32 = 12;
const SKIP_SIZE: usize = 1 << SKIP_BITS;
/// A skip entry's fields.
pub(crate) const SKIP_ENDED: u16 = 1 << 11;

/// What a table decodes, which decides the faster tables it gets beside its lookup.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum TableUse {
    Dc,
    /// AC coefficients of progressive scans: the fused table.
    ProgressiveAc,
    /// AC coefficients of sequential scans: the pair and skip tables.
    SequentialAc,
}

/// A decoding table.
pub(crate) struct DecodeTable {
    /// By the next LOOKAHEAD bits: `(code length << 8) | symbol`, or 0 when the code is longer.
    lookup: Box<[u16; SIZE]>,
    /// Progressive AC only (4 KiB; progressive files often define a table per scan).
    fused: Option<Box<[u32; SIZE]>>,
    /// Sequential AC only (24 KiB).
    steps: Option<Box<SequentialSteps>>,
    /// The largest code of each length 0..=16 (-1 when none), for codes longer than LOOKAHEAD.
    max_code: [i32; 17],
    /// Added to a code of each length to index `symbols`.
    offset: [i32; 17],
    symbols: [u8; 256],
}

/// A sequential AC table's multi-symbol steps.
pub(crate) struct SequentialSteps {
    /// By the next PAIR_BITS bits: every whole symbol that fits, up to two coefficients and an
    /// end of block, as `first value << 32 | second value << 48 | ended | advance << 17 |
    /// second offset << 11 | first offset << 5 | bits used`; an entry with one coefficient names
    /// it twice, one with none (an end of block alone) writes a zero where the block is still
    /// zero. 0 when not even one symbol fits; a run of 16 zeros ends the entry before it.
    pub pairs: [u64; PAIR_SIZE],
    /// For skipping blocks whose values nobody needs, by the next SKIP_BITS bits: every whole
    /// symbol (code and magnitude) that fits, up to an end of block, as `bits used | positions
    /// advanced << 4 | ended << 11`; 0 when not even one fits.
    pub skip: [u16; SKIP_SIZE],
}

/// `value` read as the `size`-bit magnitude of a JPEG coefficient (the EXTEND procedure, F.2.2.1).
#[inline(always)]
pub(crate) fn extend(value: u32, size: u32) -> i32 {
    let v = value as i32;
    if v < (1 << size) >> 1 {
        v - (1 << size) + 1
    } else {
        v
    }
}

impl DecodeTable {
    pub fn new(spec: &HuffmanSpec, table_use: TableUse) -> Result<DecodeTable> {
        let codes = spec.codes()?;
        let mut table = DecodeTable {
            lookup: Box::new([0; SIZE]),
            fused: None,
            steps: None,
            max_code: [-1; 17],
            offset: [0; 17],
            symbols: [0; 256],
        };
        table.symbols[..spec.symbols.len()].copy_from_slice(&spec.symbols);
        let mut index = 0usize;
        for len in 1..=16usize {
            let count = usize::from(spec.counts[len - 1]);
            if count > 0 {
                let first = i32::from(codes[index].0);
                table.offset[len] = index as i32 - first;
                table.max_code[len] = first + count as i32 - 1;
            }
            index += count;
        }
        for (&(code, len), &symbol) in codes.iter().zip(&spec.symbols) {
            let len = u32::from(len);
            if len > LOOKAHEAD {
                continue;
            }
            let shift = LOOKAHEAD - len;
            let first = usize::from(code) << shift;
            table.lookup[first..first + (1 << shift)].fill(((len as u16) << 8) | u16::from(symbol));
        }
        match table_use {
            TableUse::Dc => {}
            TableUse::ProgressiveAc => table.fused = Some(table.fused_entries()),
            TableUse::SequentialAc => {
                let mut steps = Box::new(SequentialSteps {
                    pairs: [0; PAIR_SIZE],
                    skip: [0; SKIP_SIZE],
                });
                table.fill_pairs(&mut steps.pairs);
                table.fill_skip(&mut steps.skip);
                table.steps = Some(steps);
            }
        }
        Ok(table)
    }

    /// The fused table (a progressive AC table's).
    #[inline(always)]
    pub fn fused(&self) -> &[u32; SIZE] {
        self.fused.as_deref().expect("a progressive AC table")
    }

    /// The multi-symbol steps (a sequential AC table's).
    #[inline(always)]
    pub fn steps(&self) -> &SequentialSteps {
        self.steps.as_deref().expect("a sequential AC table")
    }

    /// By the next LOOKAHEAD bits: a whole coefficient, when its code and magnitude bits both
    /// fit: `value << 16 | run << 8 | bits used`; 0 otherwise (EOB, ZRL, or too long).
    fn fused_entries(&self) -> Box<[u32; SIZE]> {
        let mut fused = Box::new([0; SIZE]);
        for (peek, (entry, &found)) in fused.iter_mut().zip(self.lookup.iter()).enumerate() {
            let (symbol, len) = (found as u8, u32::from(found >> 8));
            let (run, size) = (u32::from(symbol >> 4), u32::from(symbol & 15));
            if found != 0 && size > 0 && len + size <= LOOKAHEAD {
                let bits = (peek >> (LOOKAHEAD - len - size)) as u32 & ((1 << size) - 1);
                let value = extend(bits, size) as i16;
                *entry = (u32::from(value as u16) << 16) | (run << 8) | (len + size);
            }
        }
        fused
    }

    /// Fills `skip` from `lookup`: for each pattern, walks whole symbols while they fit.
    fn fill_skip(&self, skip: &mut [u16; SKIP_SIZE]) {
        for (pattern, slot) in skip.iter_mut().enumerate() {
            let bits = (pattern as u64) << (64 - SKIP_BITS);
            let (mut used, mut advanced, mut ended) = (0u32, 0u16, false);
            loop {
                let entry = self.lookup[((bits << used) >> (64 - LOOKAHEAD)) as usize];
                let (symbol, len) = (entry as u8, u32::from(entry >> 8));
                let size = u32::from(symbol & 15);
                if entry == 0 || used + len + size > SKIP_BITS {
                    break;
                }
                used += len + size;
                match (symbol >> 4, size) {
                    (15, 0) => advanced += 16,
                    (_, 0) => {
                        ended = true;
                        break;
                    }
                    (run, _) => advanced += u16::from(run) + 1,
                }
                if advanced >= 63 {
                    break;
                }
            }
            if used > 0 {
                *slot = used as u16 | advanced << 4 | if ended { SKIP_ENDED } else { 0 };
            }
        }
    }

    /// Fills `pairs` from `lookup`: for each pattern, up to two whole coefficients (code and
    /// magnitude), then an end of block if one follows, while they fit.
    fn fill_pairs(&self, pairs: &mut [u64; PAIR_SIZE]) {
        for (pattern, slot) in pairs.iter_mut().enumerate() {
            let bits = (pattern as u64) << (64 - PAIR_BITS);
            // (offset from the next position, value) of each coefficient found.
            let mut found = [(0u32, 0i32); 2];
            let (mut count, mut used, mut advance, mut ended) = (0, 0u32, 0u32, false);
            loop {
                let entry = self.lookup[((bits << used) >> (64 - LOOKAHEAD)) as usize];
                let (symbol, len) = (entry as u8, u32::from(entry >> 8));
                let (run, size) = (u32::from(symbol >> 4), u32::from(symbol & 15));
                if entry == 0 || used + len + size > PAIR_BITS || (run, size) == (15, 0) {
                    break;
                }
                if size == 0 {
                    used += len;
                    ended = true;
                    break;
                }
                if count == found.len() {
                    break;
                }
                let magnitude = ((bits << (used + len)) >> (64 - size)) as u32;
                used += len + size;
                found[count] = (advance + run, extend(magnitude, size));
                count += 1;
                advance += run + 1;
            }
            if used == 0 {
                continue;
            }
            // One coefficient is written twice; none (an end of block alone) writes a zero at
            // the next position, which is still zero.
            let second = if count == 2 { found[1] } else { found[0] };
            *slot = u64::from(used)
                | u64::from(found[0].0) << PAIR_FIRST_SHIFT
                | u64::from(second.0) << PAIR_SECOND_SHIFT
                | u64::from(advance) << PAIR_ADVANCE_SHIFT
                | if ended { PAIR_ENDED } else { 0 }
                | u64::from(found[0].1 as i16 as u16) << 32
                | u64::from(second.1 as i16 as u16) << 48;
        }
    }

    /// Decodes one symbol from the top of `bits` (MSB-aligned, at least 16 valid bits):
    /// `(symbol, code length)`.
    #[inline(always)]
    pub fn decode(&self, bits: u64) -> Result<(u8, u32)> {
        let entry = self.lookup[(bits >> (64 - LOOKAHEAD)) as usize];
        if entry != 0 {
            return Ok((entry as u8, u32::from(entry >> 8)));
        }
        self.decode_long(bits)
    }

    #[cold]
    fn decode_long(&self, bits: u64) -> Result<(u8, u32)> {
        for len in LOOKAHEAD as usize + 1..=16 {
            let code = (bits >> (64 - len)) as i32;
            if code <= self.max_code[len] {
                return Ok((self.symbols[(code + self.offset[len]) as usize], len as u32));
            }
        }
        Err(invalid(
            "corrupt entropy-coded data: a bit pattern that is no Huffman code of the table",
        ))
    }
}

/// An encoding table: code and length for every symbol.
pub(crate) struct EncodeTable {
    /// `(code << 8) | length` by symbol; length 0 when the table has no code for it.
    codes: [u32; 256],
}

impl EncodeTable {
    pub fn new(spec: &HuffmanSpec) -> Result<EncodeTable> {
        let mut codes = [0u32; 256];
        for (&(code, len), &symbol) in spec.codes()?.iter().zip(&spec.symbols) {
            codes[usize::from(symbol)] = (u32::from(code) << 8) | u32::from(len);
        }
        Ok(EncodeTable { codes })
    }

    /// `(code, length)` of `symbol`.
    #[inline(always)]
    pub fn code(&self, symbol: u8) -> (u32, u32) {
        let entry = self.codes[usize::from(symbol)];
        (entry >> 8, entry & 0xFF)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tables::{std_ac_luminance, std_dc_luminance};
    use super::*;

    #[test]
    fn extend_follows_the_standard() {
        assert_eq!(extend(0, 1), -1);
        assert_eq!(extend(1, 1), 1);
        assert_eq!(extend(0, 3), -7);
        assert_eq!(extend(3, 3), -4);
        assert_eq!(extend(4, 3), 4);
        assert_eq!(extend(0, 0), 0);
    }

    #[test]
    fn every_code_decodes_to_its_symbol() {
        for (spec, table_use) in [
            (std_dc_luminance(), TableUse::Dc),
            (std_ac_luminance(), TableUse::SequentialAc),
        ] {
            let decode = DecodeTable::new(&spec, table_use).unwrap();
            let encode = EncodeTable::new(&spec).unwrap();
            for &symbol in &spec.symbols {
                let (code, len) = encode.code(symbol);
                // The code at the top of the word, followed by ones.
                let bits = (u64::from(code) << (64 - len)) | (u64::MAX >> len);
                assert_eq!(
                    decode.decode(bits).unwrap(),
                    (symbol, len),
                    "symbol {symbol:#x}"
                );
            }
        }
    }

    #[test]
    fn skip_entries_walk_whole_symbols_up_to_the_end_of_block() {
        let spec = std_ac_luminance();
        let table = DecodeTable::new(&spec, TableUse::SequentialAc).unwrap();
        let encode = EncodeTable::new(&spec).unwrap();
        // Symbols 0x01 (+1: "00" then "1"), 0x11 (run 1, +1) and EOB, then filler ones.
        let mut bits = 0u64;
        let mut used = 0;
        for (symbol, extra, extra_len) in [(0x01u8, 1u64, 1), (0x11, 1, 1), (0x00, 0, 0)] {
            let (code, len) = encode.code(symbol);
            bits = (bits << (len + extra_len)) | (u64::from(code) << extra_len) | extra;
            used += len + extra_len;
        }
        assert!(used <= SKIP_BITS);
        let pattern = ((bits << (SKIP_BITS - used)) | ((1 << (SKIP_BITS - used)) - 1)) as usize;
        let entry = table.steps().skip[pattern];
        assert_eq!(u32::from(entry & 15), used);
        assert_eq!(
            (entry >> 4) & 0x7F,
            3,
            "one coefficient, then one after a zero"
        );
        assert_ne!(entry & SKIP_ENDED, 0);
    }

    /// A table index written as bits, spaces between symbols.
    fn pattern(bits: &str) -> usize {
        usize::from_str_radix(&bits.replace(' ', ""), 2).unwrap()
    }

    /// A pair entry's fields: bits used, first and second offset, advance, ended, values.
    fn fields(entry: u64) -> (u64, u64, u64, u64, bool, (i16, i16)) {
        (
            entry & 31,
            (entry >> PAIR_FIRST_SHIFT) & 63,
            (entry >> PAIR_SECOND_SHIFT) & 63,
            (entry >> PAIR_ADVANCE_SHIFT) & 63,
            entry & PAIR_ENDED != 0,
            ((entry >> 32) as u16 as i16, (entry >> 48) as u16 as i16),
        )
    }

    #[test]
    fn pair_entries_hold_two_coefficients_and_the_end_of_block() {
        let table = DecodeTable::new(&std_ac_luminance(), TableUse::SequentialAc).unwrap();
        // 0x01 is "00": "001" is +1, "000" is -1; the end of block is "1010"; one filler bit.
        let entry = table.steps().pairs[pattern("001 000 1010 1")];
        assert_eq!(fields(entry), (10, 0, 1, 2, true, (1, -1)));
        // 0x11 (one zero, then a coefficient) is "1100": "11001" is +1 at offset 1; then a
        // code that does not fit: the coefficient alone, named twice.
        let entry = table.steps().pairs[pattern("11001 111111")];
        assert_eq!(fields(entry), (5, 1, 1, 2, false, (1, 1)));
        // The end of block alone: nothing written but a zero where the block is still zero.
        let entry = table.steps().pairs[pattern("1010 1111111")];
        assert_eq!(fields(entry), (4, 0, 0, 0, true, (0, 0)));
    }

    #[test]
    fn fused_entries_hold_the_whole_coefficient() {
        let spec = std_ac_luminance();
        let decode = DecodeTable::new(&spec, TableUse::ProgressiveAc).unwrap();
        let encode = EncodeTable::new(&spec).unwrap();
        // 0x01 (run 0, size 1) is "00": followed by bit 0 -> value -1, by 1 -> +1.
        let (code, len) = encode.code(0x01);
        assert_eq!((code, len), (0, 2));
        let entry = decode.fused()[0b001 << (LOOKAHEAD - 3)];
        assert_eq!((entry >> 16) as u16 as i16, 1);
        assert_eq!(entry & 0xFF, 3);
        let entry = decode.fused()[0];
        assert_eq!((entry >> 16) as u16 as i16, -1);
    }
}
