//! Writing one-channel baseline JPEGs from quantized blocks: the file's segments, and the
//! entropy coder with requantization fused into it.
//!
//! Both paths end here. The coefficient path hands over the source's blocks with a
//! [`Requantizer`] from the source's steps to the output's; the pixel path hands over blocks its
//! FDCT already quantized to the output's steps (an identity requantizer).

use super::bits::BitWriter;
use super::decoder::Block;
use super::huffman::EncodeTable;
use super::markers::invalid;
use super::survive;
use super::tables::{self, QuantTable};
use crate::Orientation;
use crate::error::Result;

/// Maps quantized coefficients from the source's steps to the output's: the value a decoder
/// would reconstruct, `v * source step`, rounded to the nearest multiple of the output step.
///
/// Ties go toward zero. A source quantized finely holds many values exactly halfway between two
/// output steps (with source step 1, every even value for an even output step); both neighbours
/// are equally close, and zero is the one that costs no bits. Rounding them away from zero, as
/// libjpeg rounds pixels' coefficients, spends bits on those values for no gain in PSNR.
pub(crate) struct Requantizer {
    /// Per zigzag position: source step, output step, and `ceil(2^40 / output step)`.
    source: [u32; 64],
    output: [u32; 64],
    /// Per zigzag position, `source * reciprocal` and `(output - 1) / 2 * reciprocal`, so that
    /// requantizing is one multiply and one add: `(|v| * scale + offset) >> 40`.
    scale: [u64; 64],
    offset: [u64; 64],
    /// Per zigzag position, the largest magnitude that becomes zero in the output.
    vanishing: [i16; 64],
    surviving: survive::Kernel,
    /// An output step above 16,384 (16-bit tables only) would make the multiply-shift inexact;
    /// such tables divide instead.
    divide: bool,
}

impl Requantizer {
    pub fn new(source: &QuantTable, output: &QuantTable) -> Requantizer {
        let output32: [u32; 64] = std::array::from_fn(|k| u32::from(output[k]).max(1));
        let source32: [u32; 64] = std::array::from_fn(|k| u32::from(source[k]));
        let reciprocal: [u64; 64] =
            std::array::from_fn(|k| (1u64 << 40).div_ceil(u64::from(output32[k])));
        Requantizer {
            source: source32,
            output: output32,
            scale: std::array::from_fn(|k| u64::from(source32[k]) * reciprocal[k]),
            offset: std::array::from_fn(|k| u64::from((output32[k] - 1) / 2) * reciprocal[k]),
            // |v| * source + (output - 1) / 2 < output
            //   <=>  |v| < ceil((output - (output - 1) / 2) / source)
            vanishing: std::array::from_fn(|k| match source32[k] {
                0 => i16::MAX,
                s => {
                    let smallest_kept = (output32[k] - (output32[k] - 1) / 2).div_ceil(s);
                    (smallest_kept - 1).min(i16::MAX as u32) as i16
                }
            }),
            surviving: survive::kernel(),
            divide: output32.iter().any(|&q| q > 16_384),
        }
    }

    /// Bit k set where coefficient k stays nonzero in the output (bit 0, the DC, always set), so
    /// the encoding loop visits only what it writes: a finely quantized source holds several
    /// times more nonzero coefficients than its output.
    #[inline(always)]
    pub fn surviving(&self, coef: &[i16; 64]) -> u64 {
        (self.surviving)(coef, &self.vanishing) | 1
    }

    /// The magnitude of the coefficient at zigzag position `k`, of magnitude `magnitude` in
    /// source steps, in output steps (the sign never changes).
    ///
    /// Exact for every `|v| <= 2047` (the decoder rejects larger): with `source <= output`,
    /// `a = |v| * source + (output - 1) / 2 < 2^11 * output`, and with `output <= 16384` the rounding
    /// error of the reciprocal, `a * (reciprocal - 2^40 / output) / 2^40 < 2^11 * output / 2^40`,
    /// stays below `1 / output`, so the multiply-shift equals `a / output`. (`a * reciprocal`
    /// is computed as `|v| * scale + offset`: the same integer, below 2^52.)
    #[inline(always)]
    pub fn apply(&self, k: usize, magnitude: u16) -> u32 {
        if self.divide {
            (u32::from(magnitude) * self.source[k] + (self.output[k] - 1) / 2) / self.output[k]
        } else {
            ((u64::from(magnitude) * self.scale[k] + self.offset[k]) >> 40) as u32
        }
    }
}

/// The output table for a quality level given the source's own: the standard luminance table
/// scaled by libjpeg's rule, but never finer than the source's step, since a finer step cannot
/// bring back detail the source already dropped and only costs bytes. `None` keeps the source's
/// steps (zero steps, which libjpeg reads as erasing the coefficient, become 1 with the
/// coefficient zeroed by the [`Requantizer`]).
pub(crate) fn output_table(quality: Option<u8>, source: &QuantTable) -> QuantTable {
    match quality {
        Some(q) => {
            let standard = tables::luminance_table(q);
            std::array::from_fn(|k| standard[k].max(source[k]))
        }
        None => std::array::from_fn(|k| source[k].max(1)),
    }
}

/// Magnitude category and the bits that follow it (F.1.2.1) of a nonzero value given as its
/// magnitude `q` and sign: negative values are sent as `v - 1` in `size` bits, which is the
/// complement of the magnitude.
#[inline(always)]
fn category(q: u32, negative: bool) -> (u32, u32) {
    let size = 32 - q.leading_zeros();
    let bits = if negative { !q } else { q } & ((1u32 << size) - 1);
    (size, bits)
}

/// [`category`] of a signed value (0 has size 0).
#[inline(always)]
fn magnitude(v: i32) -> (u32, u32) {
    let sign = v >> 31;
    let size = 32 - ((v ^ sign) - sign).leading_zeros();
    let bits = ((v + sign) as u32) & ((1u32 << size) - 1);
    (size, bits)
}

/// A one-channel baseline JPEG being written.
pub(crate) struct GrayJpegWriter {
    writer: BitWriter,
    dc: EncodeTable,
    ac: EncodeTable,
    prev_dc: i32,
}

impl GrayJpegWriter {
    /// Writes the file's segments up to the scan's entropy-coded data, with `quant` (zigzag) as
    /// the only quantization table. `capacity` is a hint for the output's size.
    pub fn new(
        width: u32,
        height: u32,
        quant: &QuantTable,
        orientation: Orientation,
        capacity: usize,
    ) -> Result<Self> {
        let (w, h) = match (u16::try_from(width), u16::try_from(height)) {
            (Ok(w), Ok(h)) => (w, h),
            _ => {
                return Err(crate::Error::Internal(format!(
                    "{width}x{height} does not fit a JPEG"
                )));
            }
        };
        let mut out = Vec::with_capacity(capacity);
        out.extend_from_slice(&[0xFF, 0xD8]);
        // JFIF APP0: version 1.01, no density unit, 1:1 pixel aspect, no thumbnail.
        out.extend_from_slice(&[
            0xFF, 0xE0, 0, 16, b'J', b'F', b'I', b'F', 0, 1, 1, 0, 0, 1, 0, 1, 0, 0,
        ]);
        if orientation != Orientation::NORMAL {
            let tiff = orientation.to_exif();
            segment(&mut out, 0xE1, &[b"Exif\0\0".as_slice(), &tiff].concat());
        }
        // Steps above 255 need a 16-bit table, which baseline (SOF0) forbids: use SOF1 then.
        let wide = quant.iter().any(|&q| q > 255);
        let mut dqt = vec![if wide { 0x10 } else { 0x00 }];
        for &q in quant {
            if wide {
                dqt.extend_from_slice(&q.to_be_bytes());
            } else {
                dqt.push(q as u8);
            }
        }
        segment(&mut out, 0xDB, &dqt);
        let [wh, wl] = w.to_be_bytes();
        let [hh, hl] = h.to_be_bytes();
        segment(
            &mut out,
            if wide { 0xC1 } else { 0xC0 },
            &[8, hh, hl, wh, wl, 1, 1, 0x11, 0],
        );
        let (dc_spec, ac_spec) = (tables::std_dc_luminance(), tables::std_ac_luminance());
        let mut dht = vec![0x00];
        dht.extend_from_slice(&dc_spec.counts);
        dht.extend_from_slice(&dc_spec.symbols);
        dht.push(0x10);
        dht.extend_from_slice(&ac_spec.counts);
        dht.extend_from_slice(&ac_spec.symbols);
        segment(&mut out, 0xC4, &dht);
        segment(&mut out, 0xDA, &[1, 1, 0x00, 0, 63, 0]);
        Ok(GrayJpegWriter {
            writer: BitWriter::new(out),
            dc: EncodeTable::new(&dc_spec)?,
            ac: EncodeTable::new(&ac_spec)?,
            prev_dc: 0,
        })
    }

    /// Writes one block, mapping each coefficient through `requantize` on the way. Only the
    /// coefficients in `mask` are visited; all others must map to zero.
    #[inline(always)]
    pub fn write_block(
        &mut self,
        block: &Block,
        mask: u64,
        requantize: impl Fn(usize, u16) -> u32,
    ) -> Result<()> {
        let mut out = self.writer.cursor();
        let dc_magnitude = requantize(0, block.coef[0].unsigned_abs()) as i32;
        let dc = if block.coef[0] < 0 {
            -dc_magnitude
        } else {
            dc_magnitude
        };
        let diff = dc - self.prev_dc;
        self.prev_dc = dc;
        let (size, bits) = magnitude(diff);
        if size > 11 {
            return Err(invalid(format!(
                "a DC difference of {diff} does not fit 8-bit JPEG"
            )));
        }
        let (code, len) = self.dc.code(size as u8);
        out.put((code << size) | bits, len + size);
        let mut mask = mask & !1;
        let mut last = 0u32;
        while mask != 0 {
            let k = mask.trailing_zeros();
            mask &= mask - 1;
            let source = block.coef[k as usize];
            let q = requantize(k as usize, source.unsigned_abs());
            if q == 0 {
                continue;
            }
            let mut run = k - last - 1;
            while run > 15 {
                let (code, len) = self.ac.code(0xF0);
                out.put(code, len);
                run -= 16;
            }
            let (size, bits) = category(q, source < 0);
            if size > 10 {
                return Err(invalid(format!(
                    "an AC coefficient of magnitude {q} does not fit 8-bit JPEG"
                )));
            }
            let (code, len) = self.ac.code(((run << 4) | size) as u8);
            out.put((code << size) | bits, len + size);
            last = k;
        }
        if last != 63 {
            let (code, len) = self.ac.code(0x00);
            out.put(code, len);
        }
        let state = out.state();
        self.writer.settle(state);
        Ok(())
    }

    /// Ends the scan and the file.
    pub fn finish(self) -> Vec<u8> {
        let mut out = self.writer.finish();
        out.extend_from_slice(&[0xFF, 0xD9]);
        out
    }
}

fn segment(out: &mut Vec<u8>, marker: u8, payload: &[u8]) {
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magnitude_follows_the_standard() {
        assert_eq!(magnitude(0), (0, 0));
        assert_eq!(magnitude(1), (1, 1));
        assert_eq!(magnitude(-1), (1, 0));
        assert_eq!(magnitude(-3), (2, 0));
        assert_eq!(magnitude(5), (3, 5));
        assert_eq!(magnitude(-5), (3, 2));
        assert_eq!(magnitude(-1023), (10, 0));
        for v in [-1023i32, -5, -3, -1, 1, 5, 1023] {
            assert_eq!(category(v.unsigned_abs(), v < 0), magnitude(v));
        }
    }

    #[test]
    fn requantization_rounds_to_nearest_with_ties_toward_zero() {
        // Worked by hand: magnitude x source step / output step, to the nearest, ties toward zero.
        for (source_step, output_step, magnitude, want) in [
            (1u16, 2u16, 1u16, 0u32), // 0.5, a tie
            (1, 2, 3, 1),             // 1.5, a tie
            (1, 2, 2047, 1023),       // 1023.5, a tie
            (3, 2, 1, 1),             // 1.5, a tie
            (4, 8, 3, 1),             // 1.5, a tie
            (1, 3, 1, 0),             // 0.33
            (1, 3, 2, 1),             // 0.67
            (1, 4, 3, 1),             // 0.75
            (16, 30, 1023, 546),      // 545.6
            (255, 1000, 2047, 522),   // 521.985
            (1, 16_384, 2047, 0),     // 0.125
        ] {
            let r = Requantizer::new(&[source_step; 64], &[output_step; 64]);
            assert_eq!(
                r.apply(5, magnitude),
                want,
                "{magnitude} x {source_step} / {output_step}"
            );
        }
        // Every value and step against exact integer division with the same rounding.
        for source_step in [1u16, 2, 3, 7, 16, 99, 255, 1000] {
            for output_step in [1u16, 2, 5, 30, 99, 255, 4000, 16_384] {
                let output_step = output_step.max(source_step);
                let r = Requantizer::new(&[source_step; 64], &[output_step; 64]);
                for v in 0u16..=2047 {
                    let x = u32::from(v) * u32::from(source_step);
                    let want = (x + (u32::from(output_step) - 1) / 2) / u32::from(output_step);
                    assert_eq!(
                        r.apply(5, v),
                        want,
                        "v {v} steps {source_step} -> {output_step}"
                    );
                }
            }
        }
    }

    #[test]
    fn surviving_coefficients_are_exactly_the_nonzero_outputs() {
        let source: [u16; 64] = std::array::from_fn(|k| [0, 1, 2, 3, 7, 16, 99, 255][k % 8]);
        let output = output_table(Some(85), &source);
        let r = Requantizer::new(&source, &output);
        for seed in 0..200i32 {
            let divisor = 1 + (seed % 7) * 40;
            let coef: [i16; 64] = std::array::from_fn(|k| {
                ((((k as i32 * 7919 + seed * 104_729) % 4095) - 2047) / divisor) as i16
            });
            let mask = r.surviving(&coef);
            for k in 1..64 {
                let kept = mask >> k & 1 == 1;
                assert_eq!(
                    kept,
                    r.apply(k, coef[k].unsigned_abs()) != 0,
                    "k {k} v {} steps {} -> {}",
                    coef[k],
                    source[k],
                    output[k]
                );
            }
            assert_eq!(mask & 1, 1);
        }
    }

    #[test]
    fn a_zero_source_step_erases_the_coefficient() {
        let r = Requantizer::new(&[0; 64], &output_table(None, &[0; 64]));
        assert_eq!(r.apply(3, 100), 0);
        let keep = Requantizer::new(&[7; 64], &output_table(None, &[7; 64]));
        assert_eq!(keep.apply(3, 100), 100);
    }

    #[test]
    fn output_steps_are_never_finer_than_the_source() {
        let fine = [1u16; 64];
        assert_eq!(output_table(Some(85), &fine), tables::luminance_table(85));
        let coarse = [200u16; 64];
        assert_eq!(output_table(Some(85), &coarse), coarse);
    }
}
