//! Quantization and Huffman tables: parsing DQT and DHT, and the standard tables of Annex K.

use super::markers::invalid;
use crate::error::Result;

/// Zigzag index to natural (row-major) index.
pub(crate) const NATURAL: [u8; 64] = [
    0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27, 20,
    13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51, 58, 59,
    52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63,
];

/// A quantization table in zigzag order, as stored in DQT.
pub(crate) type QuantTable = [u16; 64];

/// Annex K.1's luminance table, in natural order.
const STD_LUMINANCE: [u16; 64] = [
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113,
    92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99,
];

/// The luminance table for a libjpeg quality level (1 to 100), in zigzag order, exactly as
/// libjpeg's `jpeg_set_quality` with `force_baseline` computes it.
pub(crate) fn luminance_table(quality: u8) -> QuantTable {
    let q = u32::from(quality.clamp(1, 100));
    let scale = if q < 50 { 5000 / q } else { 200 - 2 * q };
    std::array::from_fn(|k| {
        let base = u32::from(STD_LUMINANCE[usize::from(NATURAL[k])]);
        ((base * scale + 50) / 100).clamp(1, 255) as u16
    })
}

/// Parses a DQT segment into `tables` (several tables may share one segment).
pub(crate) fn parse_dqt(mut p: &[u8], tables: &mut [Option<QuantTable>; 4]) -> Result<()> {
    while let Some((&pq_tq, rest)) = p.split_first() {
        let (precision, id) = (pq_tq >> 4, usize::from(pq_tq & 15));
        if id > 3 {
            return Err(invalid(format!(
                "quantization table id {id}, expected 0 to 3"
            )));
        }
        let size = match precision {
            0 => 64,
            1 => 128,
            _ => {
                return Err(invalid(format!(
                    "quantization table precision {precision}, expected 0 or 1"
                )));
            }
        };
        let values = rest.get(..size).ok_or_else(|| {
            invalid(format!(
                "quantization table {id} needs {size} bytes, the segment has {}",
                rest.len()
            ))
        })?;
        let mut table = [0u16; 64];
        for (k, q) in table.iter_mut().enumerate() {
            *q = if precision == 0 {
                u16::from(values[k])
            } else {
                u16::from_be_bytes([values[2 * k], values[2 * k + 1]])
            };
        }
        // A zero step is invalid, but libjpeg accepts it (the coefficient dequantizes to zero),
        // and so do we: the transcoder zeroes such coefficients as a decoder would.
        tables[id] = Some(table);
        p = &rest[size..];
    }
    Ok(())
}

/// A Huffman table as DHT defines it: how many codes of each length 1..=16, and the symbols.
#[derive(Clone, PartialEq, Eq, Debug)]
pub(crate) struct HuffmanSpec {
    pub counts: [u8; 16],
    pub symbols: Vec<u8>,
}

impl HuffmanSpec {
    /// Canonical codes: `(code, length)` for each symbol in order.
    pub fn codes(&self) -> Result<Vec<(u16, u8)>> {
        let mut out = Vec::with_capacity(self.symbols.len());
        let mut code = 0u32;
        for (len_minus_1, &count) in self.counts.iter().enumerate() {
            let len = len_minus_1 as u8 + 1;
            for _ in 0..count {
                out.push((code as u16, len));
                code += 1;
            }
            if code > (1 << len) {
                return Err(invalid(format!(
                    "Huffman table has more codes of length {len} than fit"
                )));
            }
            code <<= 1;
        }
        Ok(out)
    }
}

/// Which slot a DHT table goes to: class 0 is DC, 1 is AC; ids 0 to 3.
pub(crate) struct HuffmanSlot {
    pub class: u8,
    pub id: u8,
}

/// Parses a DHT segment into its tables.
pub(crate) fn parse_dht(mut p: &[u8]) -> Result<Vec<(HuffmanSlot, HuffmanSpec)>> {
    let mut out = Vec::new();
    while let Some((&tc_th, rest)) = p.split_first() {
        let (class, id) = (tc_th >> 4, tc_th & 15);
        if class > 1 || id > 3 {
            return Err(invalid(format!(
                "Huffman table class {class} id {id}, expected class 0 or 1 and id 0 to 3"
            )));
        }
        let counts: [u8; 16] = rest
            .get(..16)
            .ok_or_else(|| invalid("Huffman table segment ends inside its code counts"))?
            .try_into()
            .expect("16 bytes");
        let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
        if total > 256 {
            return Err(invalid(format!(
                "Huffman table declares {total} symbols, at most 256 exist"
            )));
        }
        let symbols = rest
            .get(16..16 + total)
            .ok_or_else(|| {
                invalid(format!(
                    "Huffman table declares {total} symbols, the segment holds {}",
                    rest.len().saturating_sub(16)
                ))
            })?
            .to_vec();
        let spec = HuffmanSpec { counts, symbols };
        spec.codes()?;
        out.push((HuffmanSlot { class, id }, spec));
        p = &rest[16 + total..];
    }
    Ok(out)
}

/// Annex K.3's luminance DC table.
pub(crate) fn std_dc_luminance() -> HuffmanSpec {
    HuffmanSpec {
        counts: [0, 1, 5, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0],
        symbols: (0..12).collect(),
    }
}

/// Annex K.3's luminance AC table.
pub(crate) fn std_ac_luminance() -> HuffmanSpec {
    HuffmanSpec {
        counts: [0, 2, 1, 3, 3, 2, 4, 3, 5, 5, 4, 4, 0, 0, 1, 0x7d],
        symbols: vec![
            0x01, 0x02, 0x03, 0x00, 0x04, 0x11, 0x05, 0x12, 0x21, 0x31, 0x41, 0x06, 0x13, 0x51,
            0x61, 0x07, 0x22, 0x71, 0x14, 0x32, 0x81, 0x91, 0xa1, 0x08, 0x23, 0x42, 0xb1, 0xc1,
            0x15, 0x52, 0xd1, 0xf0, 0x24, 0x33, 0x62, 0x72, 0x82, 0x09, 0x0a, 0x16, 0x17, 0x18,
            0x19, 0x1a, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39,
            0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56, 0x57,
            0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74, 0x75,
            0x76, 0x77, 0x78, 0x79, 0x7a, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x92,
            0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
            0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba, 0xc2, 0xc3,
            0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6, 0xd7, 0xd8,
            0xd9, 0xda, 0xe1, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf1, 0xf2,
            0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
    }
}

/// The chrominance tables (Annex K.3), installed when a Motion-JPEG frame has no DHT at all.
pub(crate) fn std_dc_chrominance() -> HuffmanSpec {
    HuffmanSpec {
        counts: [0, 3, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        symbols: (0..12).collect(),
    }
}

pub(crate) fn std_ac_chrominance() -> HuffmanSpec {
    HuffmanSpec {
        counts: [0, 2, 1, 2, 4, 4, 3, 4, 7, 5, 4, 4, 0, 1, 2, 0x77],
        symbols: vec![
            0x00, 0x01, 0x02, 0x03, 0x11, 0x04, 0x05, 0x21, 0x31, 0x06, 0x12, 0x41, 0x51, 0x07,
            0x61, 0x71, 0x13, 0x22, 0x32, 0x81, 0x08, 0x14, 0x42, 0x91, 0xa1, 0xb1, 0xc1, 0x09,
            0x23, 0x33, 0x52, 0xf0, 0x15, 0x62, 0x72, 0xd1, 0x0a, 0x16, 0x24, 0x34, 0xe1, 0x25,
            0xf1, 0x17, 0x18, 0x19, 0x1a, 0x26, 0x27, 0x28, 0x29, 0x2a, 0x35, 0x36, 0x37, 0x38,
            0x39, 0x3a, 0x43, 0x44, 0x45, 0x46, 0x47, 0x48, 0x49, 0x4a, 0x53, 0x54, 0x55, 0x56,
            0x57, 0x58, 0x59, 0x5a, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69, 0x6a, 0x73, 0x74,
            0x75, 0x76, 0x77, 0x78, 0x79, 0x7a, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89,
            0x8a, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0xa2, 0xa3, 0xa4, 0xa5,
            0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xb2, 0xb3, 0xb4, 0xb5, 0xb6, 0xb7, 0xb8, 0xb9, 0xba,
            0xc2, 0xc3, 0xc4, 0xc5, 0xc6, 0xc7, 0xc8, 0xc9, 0xca, 0xd2, 0xd3, 0xd4, 0xd5, 0xd6,
            0xd7, 0xd8, 0xd9, 0xda, 0xe2, 0xe3, 0xe4, 0xe5, 0xe6, 0xe7, 0xe8, 0xe9, 0xea, 0xf2,
            0xf3, 0xf4, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa,
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_50_is_the_standard_table_and_85_matches_libjpeg() {
        let t50 = luminance_table(50);
        assert_eq!(t50[0], 16);
        assert_eq!(t50[1], 11);
        assert_eq!(t50[2], 12);
        // libjpeg q85: scale 30 -> (16*30+50)/100 = 5, (11*30+50)/100 = 3.
        let t85 = luminance_table(85);
        assert_eq!((t85[0], t85[1], t85[63]), (5, 3, 30));
        assert!(luminance_table(100).iter().all(|&q| q == 1));
    }

    #[test]
    fn standard_tables_are_complete_prefix_codes() {
        for spec in [
            std_dc_luminance(),
            std_ac_luminance(),
            std_dc_chrominance(),
            std_ac_chrominance(),
        ] {
            let total: usize = spec.counts.iter().map(|&c| usize::from(c)).sum();
            assert_eq!(total, spec.symbols.len());
            spec.codes().unwrap();
        }
    }

    #[test]
    fn overfull_code_lengths_are_rejected() {
        let spec = HuffmanSpec {
            counts: [3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            symbols: vec![0, 1, 2],
        };
        assert!(spec.codes().is_err());
    }
}
