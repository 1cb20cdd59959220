//! The two sinks of decoded luma blocks: straight to an output JPEG (the coefficient path), or
//! through the inverse DCT to a luma plane (the pixel path); and the pixel path's encoder.

use std::time::{Duration, Instant};

#[cfg(target_arch = "x86_64")]
use super::decoder::has_bmi2;
use super::decoder::{Block, LumaSink, prefetch};
use super::encoder::{GrayJpegWriter, Requantizer, output_table};
use super::fdct::{Quantizer, fdct_block};
use super::idct::idct_block;
use super::rotate::Upright;
use super::tables::{QuantTable, luminance_table};
use crate::error::Result;
use crate::{Cancel, Orientation};

/// The luma blocks of a `width` x `height` image whose luma is sampled at full resolution.
fn luma_blocks(width: u32, height: u32) -> usize {
    (width as usize).div_ceil(8) * (height as usize).div_ceil(8)
}

/// An encoded output and what it is.
pub(crate) struct Encoded {
    pub data: Vec<u8>,
    pub width: u32,
    pub height: u32,
    /// The orientation the output carries.
    pub orientation: Orientation,
}

/// Output rows turned and encoded at a time: turned a quarter, an output row is a source column,
/// and a band's rows read neighbouring blocks of each source row together instead of one block
/// per cache line.
const TURN_BAND: usize = 8;

/// How many output columns ahead of the one being gathered the kept blocks' entries (mask and
/// offset) are asked for: a turned output's column is a run of one source row, far from the last.
const GATHER_AHEAD: usize = 2;

/// Writes the luma blocks to the output, requantized inside the encoding loop: as they arrive,
/// or, when the image must be turned upright, once all have arrived (the output's block order
/// is then not the source's).
pub(crate) struct Transcoder {
    width: u32,
    height: u32,
    orientation: Orientation,
    upright: Option<Upright>,
    /// `None` keeps the source's quantization.
    quality: Option<u8>,
    capacity: usize,
    output: Option<(GrayJpegWriter, Requantizer)>,
    /// While turning upright: the source's blocks, row after row, as much as survives.
    kept: Option<Kept>,
    blocks_w: usize,
    /// Time spent requantizing and entropy-encoding (the rest of a transcode is decoding).
    pub encode_time: Duration,
}

impl Transcoder {
    pub fn new(
        width: u32,
        height: u32,
        orientation: Orientation,
        quality: Option<u8>,
        capacity: usize,
    ) -> Self {
        let upright = Upright::new(orientation, width, height);
        Transcoder {
            width,
            height,
            orientation,
            upright,
            quality,
            capacity,
            output: None,
            kept: None,
            blocks_w: 0,
            encode_time: Duration::ZERO,
        }
    }

    /// The finished file, or `None` when no row ever came. Turning upright, stops at `cancel`
    /// between output rows.
    pub fn finish(mut self, cancel: &Cancel) -> Result<Option<Encoded>> {
        let Some((mut writer, requantizer)) = self.output.take() else {
            return Ok(None);
        };
        let (width, height, orientation) = match self.upright {
            None => (self.width, self.height, self.orientation),
            Some(upright) => {
                let start = Instant::now();
                let kept = self.kept.as_ref().expect("begin keeps room when turning");
                let blocks_h = kept.blocks.len() / self.blocks_w.max(1);
                let (out_w, out_h) = upright.output_size(self.blocks_w, blocks_h);
                // Output rows are gathered a band at a time, each block's coefficients turned
                // as it is unpacked, then encoded as an upright image's rows are (the BMI2
                // encoder where the CPU has it).
                let mut band = vec![Block::ZERO; TURN_BAND * out_w];
                for y0 in (0..out_h).step_by(TURN_BAND) {
                    cancel.check()?;
                    let rows = TURN_BAND.min(out_h - y0);
                    let source = |x, dy| {
                        let (sx, sy) = upright.source_block(x, y0 + dy, self.blocks_w, blocks_h);
                        sy * self.blocks_w + sx
                    };
                    for x in 0..out_w {
                        if x + GATHER_AHEAD < out_w {
                            for dy in 0..rows {
                                prefetch(&kept.blocks, source(x + GATHER_AHEAD, dy));
                            }
                        }
                        for dy in 0..rows {
                            let out = &mut band[dy * out_w + x];
                            kept.unpack(source(x, dy), &upright, out);
                        }
                    }
                    for row in band.chunks_exact(out_w).take(rows) {
                        encode_row(&mut writer, &requantizer, row)?;
                    }
                }
                self.encode_time += start.elapsed();
                let (w, h) = upright.output_size(self.width, self.height);
                (w, h, Orientation::NORMAL)
            }
        };
        Ok(Some(Encoded {
            data: writer.finish(),
            width,
            height,
            orientation,
        }))
    }
}

impl LumaSink for Transcoder {
    fn begin(&mut self, quant: &QuantTable) -> Result<()> {
        // Turned upright, each output coefficient holds a source coefficient of another
        // frequency: requantize from the source's step for that frequency.
        let source = self.upright.map_or(*quant, |upright| upright.table(quant));
        let table = output_table(self.quality, &source);
        let (width, height, orientation) = match self.upright {
            Some(upright) => {
                let (w, h) = upright.output_size(self.width, self.height);
                (w, h, Orientation::NORMAL)
            }
            None => (self.width, self.height, self.orientation),
        };
        let writer = GrayJpegWriter::new(width, height, &table, orientation, self.capacity)?;
        self.output = Some((writer, Requantizer::new(&source, &table)));
        if let Some(upright) = self.upright {
            // Blocks are kept as they came, with what survives judged against the output's
            // steps for the positions their coefficients will take.
            let survival = Requantizer::new(quant, &upright.source_table(&table));
            self.kept = Some(Kept::with_room_for(
                luma_blocks(self.width, self.height),
                survival,
            ));
        }
        Ok(())
    }

    fn row(&mut self, blocks: &[Block]) -> Result<()> {
        if let Some(kept) = &mut self.kept {
            for block in blocks {
                kept.push(block);
            }
            self.blocks_w = blocks.len();
            return Ok(());
        }
        let start = Instant::now();
        let (writer, requantizer) = self.output.as_mut().expect("begin precedes rows");
        encode_row(writer, requantizer, blocks)?;
        self.encode_time += start.elapsed();
        Ok(())
    }
}

/// The blocks of an image being turned upright, kept until the last has arrived: of each, only
/// what survives requantization, in the source's order. Most of a block vanishes at the
/// output's steps, and writing whole blocks to fresh memory and reading them back had cost more
/// than decoding them; the few survivors are turned as they are unpacked.
struct Kept {
    /// Per block, in arrival order: which coefficients survive, and where in `values` they
    /// start.
    blocks: Vec<(u64, usize)>,
    /// The surviving coefficients, block after block, in the source's zigzag order.
    values: Vec<i16>,
    /// Judges survival in the source's order (see [`Upright::source_table`]).
    survival: Requantizer,
}

impl Kept {
    /// Room for `blocks` blocks of which every coefficient survives, allocated once as the
    /// estimate counts it ([`turning_bytes`]); memory no block reaches is never touched.
    fn with_room_for(blocks: usize, survival: Requantizer) -> Kept {
        Kept {
            blocks: Vec::with_capacity(blocks),
            values: Vec::with_capacity(blocks * 64),
            survival,
        }
    }

    fn push(&mut self, block: &Block) {
        let mut mask = self.survival.surviving(&block.coef);
        self.blocks.push((mask, self.values.len()));
        while mask != 0 {
            self.values.push(block.coef[mask.trailing_zeros() as usize]);
            mask &= mask - 1;
        }
    }

    /// Block `index`, turned upright, into `out`.
    fn unpack(&self, index: usize, upright: &Upright, out: &mut Block) {
        let (mut mask, at) = self.blocks[index];
        out.coef = [0; 64];
        for &value in &self.values[at..] {
            if mask == 0 {
                break;
            }
            let (k, value) = upright.place(mask.trailing_zeros() as usize, value);
            out.coef[k] = value;
            mask &= mask - 1;
        }
    }
}

/// The most that turning a `width` x `height` image upright holds: every block kept whole (its
/// mask and offset, and all 64 coefficients), and a band of the output's blocks.
pub(crate) fn turning_bytes(width: u32, height: u32) -> usize {
    let kept = size_of::<(u64, usize)>() + 64 * size_of::<i16>();
    let widest = (width.max(height) as usize).div_ceil(8);
    luma_blocks(width, height) * kept + TURN_BAND * widest * size_of::<Block>()
}

/// Requantizes and entropy-encodes a row of blocks: the BMI2 encoder where the CPU has it.
fn encode_row(
    writer: &mut GrayJpegWriter,
    requantizer: &Requantizer,
    blocks: &[Block],
) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if has_bmi2() {
        // SAFETY: the CPU reported BMI2, POPCNT and LZCNT.
        return unsafe { encode_blocks_bmi2(writer, requantizer, blocks) };
    }
    encode_blocks_portable(writer, requantizer, blocks)
}

#[inline(never)]
fn encode_blocks_portable(
    writer: &mut GrayJpegWriter,
    requantizer: &Requantizer,
    blocks: &[Block],
) -> Result<()> {
    encode_blocks(writer, requantizer, blocks)
}

/// [`encode_blocks`] compiled for BMI2 (one-instruction variable shifts in the bit writer,
/// `lzcnt` for magnitude categories).
///
/// # Safety
/// The CPU must support BMI2, POPCNT and LZCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi1,bmi2,popcnt,lzcnt")]
#[inline(never)]
unsafe fn encode_blocks_bmi2(
    writer: &mut GrayJpegWriter,
    requantizer: &Requantizer,
    blocks: &[Block],
) -> Result<()> {
    encode_blocks(writer, requantizer, blocks)
}

/// Requantizes and entropy-codes a row of blocks.
#[inline(always)]
fn encode_blocks(
    writer: &mut GrayJpegWriter,
    requantizer: &Requantizer,
    blocks: &[Block],
) -> Result<()> {
    for block in blocks {
        let mask = requantizer.surviving(&block.coef);
        writer.write_block(block, mask, |k, v| requantizer.apply(k, v))?;
    }
    Ok(())
}

/// A whole image's luma blocks in memory, to time encoding apart from decoding.
pub(crate) struct Coefficients {
    width: u32,
    height: u32,
    quant: QuantTable,
    blocks: Vec<Block>,
}

impl Coefficients {
    pub fn new(width: u32, height: u32) -> Self {
        Coefficients {
            width,
            height,
            quant: [1; 64],
            blocks: Vec::new(),
        }
    }

    /// Requantizes to `quality` and entropy-encodes, as the transcoder does.
    pub fn encode(&self, quality: u8) -> Result<Vec<u8>> {
        let mut sink = Transcoder::new(
            self.width,
            self.height,
            Orientation::NORMAL,
            Some(quality),
            1 << 20,
        );
        sink.begin(&self.quant)?;
        let blocks_w = (self.width as usize).div_ceil(8);
        for row in self.blocks.chunks(blocks_w) {
            sink.row(row)?;
        }
        Ok(sink
            .finish(&Cancel::NEVER)?
            .map(|e| e.data)
            .unwrap_or_default())
    }
}

impl LumaSink for Coefficients {
    fn begin(&mut self, quant: &QuantTable) -> Result<()> {
        self.quant = *quant;
        Ok(())
    }

    fn row(&mut self, blocks: &[Block]) -> Result<()> {
        self.blocks.extend_from_slice(blocks);
        Ok(())
    }
}

/// Runs the inverse DCT over each block into a luma plane (padded to whole blocks).
pub(crate) struct PlaneBuilder {
    stride: usize,
    plane: Vec<u8>,
    quant: QuantTable,
    rows: usize,
}

impl PlaneBuilder {
    pub fn new(blocks_w: usize, blocks_h: usize) -> Self {
        PlaneBuilder {
            stride: blocks_w * 8,
            plane: vec![0; blocks_w * blocks_h * 64],
            quant: [0; 64],
            rows: 0,
        }
    }

    /// The `width` x `height` plane, without the padding.
    pub fn finish(self, width: usize, height: usize) -> Vec<u8> {
        if self.stride == width {
            let mut plane = self.plane;
            plane.truncate(width * height);
            return plane;
        }
        // Sized up front: collecting a `flat_map` would double its way there.
        let mut cropped = Vec::with_capacity(width * height);
        for line in self.plane.chunks_exact(self.stride).take(height) {
            cropped.extend_from_slice(&line[..width]);
        }
        cropped
    }
}

impl LumaSink for PlaneBuilder {
    fn begin(&mut self, quant: &QuantTable) -> Result<()> {
        self.quant = *quant;
        Ok(())
    }

    fn row(&mut self, blocks: &[Block]) -> Result<()> {
        let base = self.rows * 8 * self.stride;
        for (i, block) in blocks.iter().enumerate() {
            idct_block(
                block,
                &self.quant,
                &mut self.plane[base + i * 8..],
                self.stride,
            );
        }
        self.rows += 1;
        Ok(())
    }
}

/// The output buffer the pixel path's encoder starts with for a plane of `pixels` (it grows by
/// doubling past it).
pub(crate) fn encode_capacity(pixels: usize) -> usize {
    pixels / 6 + 1024
}

/// Encodes a `width` x `height` luma plane (upright) as a one-channel JPEG at `quality`: forward DCT,
/// quantization, and the same entropy coder as the coefficient path. Partial blocks at the
/// right and bottom edges repeat the last column and row, as libjpeg does.
/// Stops at `cancel` between rows of blocks.
pub(crate) fn encode_plane(
    plane: &[u8],
    width: usize,
    height: usize,
    quality: u8,
    cancel: &Cancel,
) -> Result<Vec<u8>> {
    let table = luminance_table(quality);
    let quantizer = Quantizer::new(&table);
    let mut writer = GrayJpegWriter::new(
        width as u32,
        height as u32,
        &table,
        Orientation::NORMAL,
        encode_capacity(plane.len()),
    )?;
    let mut samples = [0u8; 64];
    let mut block = Block::ZERO;
    for by in 0..height.div_ceil(8) {
        cancel.check()?;
        for bx in 0..width.div_ceil(8) {
            let full = (bx + 1) * 8 <= width && (by + 1) * 8 <= height;
            let (source, stride) = if full {
                (&plane[by * 8 * width + bx * 8..], width)
            } else {
                for (i, sample) in samples.iter_mut().enumerate() {
                    let (y, x) = (
                        (by * 8 + i / 8).min(height - 1),
                        (bx * 8 + i % 8).min(width - 1),
                    );
                    *sample = plane[y * width + x];
                }
                (&samples[..], 8)
            };
            fdct_block(source, stride, &quantizer, &mut block);
            writer.write_block(&block, block.mask, |_, magnitude| u32::from(magnitude))?;
        }
    }
    Ok(writer.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Limits;
    use crate::jpeg::{collect_luma, read_frame};
    use proptest::prelude::*;

    /// A block of sparse coefficients, as camera JPEGs hold them: a DC, then zero runs and small
    /// values with now and then a large one (the tables' long codes), ending anywhere, often
    /// on position 63 itself (no end-of-block code then).
    fn block() -> impl Strategy<Value = [i16; 64]> {
        (
            -1000i16..=1000,
            proptest::collection::vec(
                (
                    0usize..20,
                    prop_oneof![4 => -3i16..=3, 1 => -1023i16..=1023],
                ),
                0..40,
            ),
            any::<bool>(),
        )
            .prop_map(|(dc, steps, to_the_end)| {
                let mut coef = [0i16; 64];
                coef[0] = dc;
                let mut k = 1;
                for (run, value) in steps {
                    k += run;
                    if k > 63 {
                        break;
                    }
                    coef[k] = value;
                    k += 1;
                }
                if to_the_end {
                    coef[63] = 1;
                }
                coef
            })
    }

    proptest! {
        /// A kept block comes back as the turned block's survivors: survival judged in the
        /// source's order is survival in the output's, whatever the orientation and the blocks
        /// kept before it.
        #[test]
        fn kept_blocks_unpack_to_the_turned_blocks_survivors(
            blocks in proptest::collection::vec(block(), 1..8),
            orientation in 2u8..=8,
        ) {
            let upright = Upright::new(Orientation::new(orientation), 8, 8).expect("aligned");
            let source_steps = luminance_table(90);
            let turned_steps = upright.table(&source_steps);
            let output = output_table(Some(50), &turned_steps);
            let survival = Requantizer::new(&source_steps, &upright.source_table(&output));
            let mut kept = Kept::with_room_for(blocks.len(), survival);
            for coef in &blocks {
                kept.push(&Block { coef: *coef, mask: u64::MAX });
            }
            let requantizer = Requantizer::new(&turned_steps, &output);
            for (i, coef) in blocks.iter().enumerate() {
                let mut turned = [0i16; 64];
                for (j, &value) in coef.iter().enumerate() {
                    let (k, value) = upright.place(j, value);
                    turned[k] = value;
                }
                let surviving = requantizer.surviving(&turned);
                let want: [i16; 64] =
                    std::array::from_fn(|k| if surviving >> k & 1 == 1 { turned[k] } else { 0 });
                let mut unpacked = Block { coef: [7; 64], mask: 0 };
                kept.unpack(i, &upright, &mut unpacked);
                prop_assert_eq!(unpacked.coef, want, "block {}", i);
            }
        }

        /// The decoder's table steps (two coefficients and an end of block at once where they
        /// fit) read back exactly what the encoder wrote, block after block.
        #[test]
        fn encoded_blocks_decode_to_themselves(blocks in proptest::collection::vec(block(), 1..24)) {
            let width = 8 * blocks.len() as u32;
            let mut writer = GrayJpegWriter::new(width, 8, &[1; 64], Orientation::NORMAL, 1 << 16)
                .expect("writer");
            for coef in &blocks {
                let block = Block { coef: *coef, mask: u64::MAX };
                writer.write_block(&block, u64::MAX, |_, v| u32::from(v)).expect("encodable");
            }
            let data = writer.finish();
            let frame = read_frame(&data, &Limits::default()).expect("frame");
            let decoded = collect_luma(&data, &frame).expect("decodes");
            prop_assert_eq!(decoded.blocks.len(), blocks.len());
            for (got, want) in decoded.blocks.iter().zip(&blocks) {
                prop_assert_eq!(&got.coef, want);
            }
        }
    }
}
