//! Entropy decoding of the luma component's DCT coefficients, for baseline and progressive
//! Huffman-coded JPEGs.
//!
//! Only luma is kept. Chroma blocks inside interleaved scans are decoded to find where the next
//! block starts and then dropped; scans that hold no luma are skipped by searching for the next
//! marker, without decoding at all. Sequential files stream: each MCU row's luma blocks go to the
//! sink as soon as they are decoded, so memory is one band of MCU rows. Progressive files need
//! every scan before any block is final, so they keep the whole luma plane
//! (`blocks x 136` bytes: 25 MB for 12 megapixels).

use super::bits::{BitReader, ScanData, skip_scan};
use super::huffman::{
    DecodeTable, LOOKAHEAD, PAIR_ADVANCE_SHIFT, PAIR_BITS, PAIR_ENDED, PAIR_FIRST_SHIFT,
    PAIR_SECOND_SHIFT, SKIP_BITS, SKIP_ENDED, TableUse, extend,
};
use super::markers::{self, Coding, Frame, Segments, invalid};
use super::tables::{self, QuantTable};
use crate::error::{Error, Result};
use crate::{Cancel, Limits};

/// One 8x8 block of quantized coefficients in zigzag order.
#[derive(Clone, Copy)]
pub(crate) struct Block {
    pub coef: [i16; 64],
    /// A superset of the nonzero positions: bit k is set wherever `coef[k]` may be nonzero.
    /// Progressive decoding keeps it exact (its refinement needs it); sequential decoding sets
    /// every bit rather than spend an instruction per coefficient on it (the encoder computes
    /// its own mask of what survives requantization anyway).
    pub mask: u64,
}

impl Block {
    pub const ZERO: Block = Block {
        coef: [0; 64],
        mask: 0,
    };
}

/// Where decoded luma blocks go, one row of blocks at a time, top to bottom.
pub(crate) trait LumaSink {
    /// Called once, before the first row, with the luma quantization table (zigzag order).
    fn begin(&mut self, quant: &QuantTable) -> Result<()>;
    /// One row of blocks, as many as the luma plane is wide (`Frame::component_blocks(0).0`).
    fn row(&mut self, blocks: &[Block]) -> Result<()>;
}

/// The largest quantized DC a valid 8-bit JPEG holds (the DC of a flat block ranges over
/// -1024..=1016 before quantization); past it the stream is corrupt.
const MAX_DC: i32 = 2047;
/// The largest quantized AC magnitude of an 8-bit JPEG (10 magnitude bits).
const MAX_AC: i32 = 1023;

/// Decodes the luma coefficients of `data` (whose frame is `frame`) into `sink`.
///
/// Requires `frame.coding` to be Huffman sequential or progressive with 8-bit samples, and the
/// luma component (component 0) to have the largest sampling factors; the caller checks.
/// Refuses the scan past `limits.max_scans` before decoding it; stops at `cancel` between scans
/// and between rows of MCUs.
pub(crate) fn decode_luma(
    data: &[u8],
    frame: &Frame,
    limits: &Limits,
    cancel: &Cancel,
    sink: &mut impl LumaSink,
) -> Result<()> {
    Decoder::new(data, frame, limits, cancel).run(sink)
}

struct Decoder<'a> {
    data: &'a [u8],
    frame: &'a Frame,
    limits: &'a Limits,
    cancel: &'a Cancel,
    /// Scans met so far, for [`Limits::max_scans`].
    scans: u32,
    quant: [Option<QuantTable>; 4],
    dc: [Option<DecodeTable>; 4],
    ac: [Option<DecodeTable>; 4],
    /// Whether any DHT was seen; Motion-JPEG frames have none and use the standard tables.
    saw_dht: bool,
    restart_interval: usize,
    scan: ScanData,
    /// Sequential: the luma scan has been decoded. Progressive: some luma DC scan has.
    luma_seen: bool,
    began: bool,
    /// Progressive only: the whole luma plane, MCU-padded.
    plane: Vec<Block>,
}

/// A scan header (SOS).
struct ScanHeader {
    /// Frame component index, DC table, AC table; in scan order.
    components: Vec<(usize, usize, usize)>,
    ss: usize,
    se: usize,
    ah: u8,
    al: u8,
}

impl<'a> Decoder<'a> {
    fn new(data: &'a [u8], frame: &'a Frame, limits: &'a Limits, cancel: &'a Cancel) -> Self {
        Decoder {
            data,
            frame,
            limits,
            cancel,
            scans: 0,
            quant: [None; 4],
            dc: [None, None, None, None],
            ac: [None, None, None, None],
            saw_dht: false,
            restart_interval: 0,
            scan: ScanData::default(),
            luma_seen: false,
            began: false,
            plane: Vec::new(),
        }
    }

    fn run(mut self, sink: &mut impl LumaSink) -> Result<()> {
        let mut segments = Segments::new(self.data)?;
        if self.frame.coding == Coding::Progressive {
            let (w, h) = self.frame.padded_luma_blocks();
            self.plane = vec![Block::ZERO; w * h];
        }
        loop {
            match segments.next_marker()? {
                markers::EOI => break,
                markers::SOS => {
                    self.cancel.check()?;
                    self.scans += 1;
                    self.limits.check_scans(self.scans)?;
                    let header = self.parse_scan_header(segments.payload()?)?;
                    segments.pos = self.decode_scan(&header, segments.pos, sink)?;
                }
                markers::DQT => tables::parse_dqt(segments.payload()?, &mut self.quant)?,
                markers::DHT => {
                    for (slot, spec) in tables::parse_dht(segments.payload()?)? {
                        let table = DecodeTable::new(&spec, self.table_use(slot.class == 1))?;
                        let tables = if slot.class == 0 {
                            &mut self.dc
                        } else {
                            &mut self.ac
                        };
                        tables[usize::from(slot.id)] = Some(table);
                    }
                    self.saw_dht = true;
                }
                markers::DRI => {
                    let p = segments.payload()?;
                    if p.len() < 2 {
                        return Err(invalid("restart interval segment is shorter than 2 bytes"));
                    }
                    self.restart_interval = usize::from(u16::from_be_bytes([p[0], p[1]]));
                }
                markers::DNL => {
                    return Err(Error::unsupported(
                        "a JPEG whose height is defined later by a DNL marker",
                    ));
                }
                0xD0..=0xD7 | 0x01 => {}
                _ => {
                    segments.payload()?;
                }
            }
        }
        if !self.luma_seen {
            return Err(invalid(
                "the image ends (EOI) before any scan holding the luma component",
            ));
        }
        if self.frame.coding == Coding::Progressive {
            self.emit_plane(sink)?;
        }
        Ok(())
    }

    fn parse_scan_header(&mut self, p: &[u8]) -> Result<ScanHeader> {
        let count = usize::from(*p.first().ok_or_else(|| invalid("empty scan header"))?);
        if !(1..=4).contains(&count) || p.len() < 1 + 2 * count + 3 {
            return Err(invalid(format!(
                "scan header of {} bytes for {count} components",
                p.len()
            )));
        }
        let mut components = Vec::with_capacity(count);
        for c in p[1..1 + 2 * count].chunks_exact(2) {
            let index = self
                .frame
                .components
                .iter()
                .position(|fc| fc.id == c[0])
                .ok_or_else(|| {
                    invalid(format!(
                        "the scan names component id {}, which the frame does not have",
                        c[0]
                    ))
                })?;
            // B.2.3: a scan lists its components in the frame's order (which also rules out
            // naming one twice).
            if components.last().is_some_and(|&(last, _, _)| index <= last) {
                return Err(invalid(format!(
                    "the scan names component id {} out of the frame's order",
                    c[0]
                )));
            }
            let (dc, ac) = (usize::from(c[1] >> 4), usize::from(c[1] & 15));
            if dc > 3 || ac > 3 {
                return Err(invalid(format!(
                    "the scan selects Huffman tables {dc}/{ac}, expected 0 to 3"
                )));
            }
            components.push((index, dc, ac));
        }
        let tail = &p[1 + 2 * count..];
        let header = ScanHeader {
            components,
            ss: usize::from(tail[0]),
            se: usize::from(tail[1]),
            ah: tail[2] >> 4,
            al: tail[2] & 15,
        };
        let ok = match self.frame.coding {
            Coding::Sequential => {
                header.ss == 0 && header.se == 63 && header.ah == 0 && header.al == 0
            }
            Coding::Progressive => {
                let dc_scan = header.ss == 0 && header.se == 0;
                let ac_scan =
                    header.ss >= 1 && header.se >= header.ss && header.se <= 63 && count == 1;
                (dc_scan || ac_scan) && header.ah <= 13 && header.al <= 13
            }
        };
        if !ok {
            return Err(invalid(format!(
                "invalid scan parameters for a {:?} JPEG: spectral selection {}..={}, approximation {}/{}",
                self.frame.coding, header.ss, header.se, header.ah, header.al
            )));
        }
        if count > 1 {
            let blocks: usize = header
                .components
                .iter()
                .map(|&(i, _, _)| {
                    usize::from(self.frame.components[i].h)
                        * usize::from(self.frame.components[i].v)
                })
                .sum();
            if blocks > 10 {
                return Err(invalid(format!(
                    "an interleaved scan of {blocks} blocks per MCU, at most 10 are allowed"
                )));
            }
        }
        Ok(header)
    }

    /// Makes sure the tables a scan uses exist, installing the standard ones where a
    /// Motion-JPEG frame defined none.
    fn check_tables(&mut self, header: &ScanHeader, need_dc: bool, need_ac: bool) -> Result<()> {
        for &(_, dc, ac) in &header.components {
            if need_dc && self.dc[dc].is_none() {
                self.dc[dc] = Some(self.default_table(dc, false)?);
            }
            if need_ac && self.ac[ac].is_none() {
                self.ac[ac] = Some(self.default_table(ac, true)?);
            }
        }
        Ok(())
    }

    fn default_table(&self, id: usize, is_ac: bool) -> Result<DecodeTable> {
        let kind = if is_ac { "AC" } else { "DC" };
        let spec = match (self.saw_dht, id, is_ac) {
            (false, 0, false) => tables::std_dc_luminance(),
            (false, 0, true) => tables::std_ac_luminance(),
            (false, 1, false) => tables::std_dc_chrominance(),
            (false, 1, true) => tables::std_ac_chrominance(),
            _ => {
                return Err(invalid(format!(
                    "the scan uses {kind} Huffman table {id}, which was never defined"
                )));
            }
        };
        DecodeTable::new(&spec, self.table_use(is_ac))
    }

    /// What a DC or AC table of this frame decodes.
    fn table_use(&self, is_ac: bool) -> TableUse {
        match (is_ac, self.frame.coding) {
            (false, _) => TableUse::Dc,
            (true, Coding::Sequential) => TableUse::SequentialAc,
            (true, Coding::Progressive) => TableUse::ProgressiveAc,
        }
    }

    /// Decodes (or skips) one scan starting at `start`; returns the position of the marker after it.
    fn decode_scan(
        &mut self,
        header: &ScanHeader,
        start: usize,
        sink: &mut impl LumaSink,
    ) -> Result<usize> {
        let has_luma = header.components.iter().any(|&(i, _, _)| i == 0);
        if !has_luma {
            return skip_scan(self.data, start);
        }
        let quant_id = usize::from(self.frame.components[0].quant_table);
        if !self.began {
            let quant = self.quant[quant_id].ok_or_else(|| {
                invalid(format!(
                    "the luma component uses quantization table {quant_id}, which was never defined"
                ))
            })?;
            sink.begin(&quant)?;
            self.began = true;
        }
        let end = {
            let mut scan = std::mem::take(&mut self.scan);
            let end = scan.extract(self.data, start)?;
            let result = match self.frame.coding {
                Coding::Sequential => self.sequential_scan(header, &scan, sink),
                Coding::Progressive => self.progressive_scan(header, &scan),
            };
            self.scan = scan;
            result?;
            end
        };
        Ok(end)
    }

    /// MCU geometry of a scan: MCUs across and down, and for each scan component its blocks per
    /// MCU across and down. A scan of one component has one block per MCU and covers only the
    /// component's own blocks.
    fn scan_geometry(&self, header: &ScanHeader) -> (usize, usize, Vec<(usize, usize)>) {
        if header.components.len() == 1 {
            let (w, h) = self.frame.component_blocks(header.components[0].0);
            (w, h, vec![(1, 1)])
        } else {
            let (mx, my) = self.frame.mcus();
            let sizes = header
                .components
                .iter()
                .map(|&(i, _, _)| {
                    (
                        usize::from(self.frame.components[i].h),
                        usize::from(self.frame.components[i].v),
                    )
                })
                .collect();
            (mx, my, sizes)
        }
    }

    fn sequential_scan(
        &mut self,
        header: &ScanHeader,
        scan: &ScanData,
        sink: &mut impl LumaSink,
    ) -> Result<()> {
        if self.luma_seen {
            return Err(invalid("a second sequential scan holds the luma component"));
        }
        self.luma_seen = true;
        self.check_tables(header, true, true)?;
        let (mcus_x, mcus_y, sizes) = self.scan_geometry(header);
        let luma_pos = header
            .components
            .iter()
            .position(|&(i, _, _)| i == 0)
            .expect("scan has luma");
        let (luma_h, luma_v) = sizes[luma_pos];
        let stride = mcus_x * luma_h;
        let (blocks_w, blocks_h) = self.frame.component_blocks(0);
        let mut band = vec![Block::ZERO; stride * luma_v];
        let tables: Vec<(&DecodeTable, &DecodeTable)> = header
            .components
            .iter()
            .map(|&(_, dc, ac)| {
                (
                    self.dc[dc].as_ref().expect("checked"),
                    self.ac[ac].as_ref().expect("checked"),
                )
            })
            .collect();
        let bmi2 = has_bmi2();
        let plan = mcu_plan(&sizes, luma_pos, stride);
        let mut reader = BitReader::new(&scan.bytes, 0);
        let mut preds = [0i32; 4];
        let mut restarts = Restarts::new(self.restart_interval);
        for mcu_y in 0..mcus_y {
            self.cancel.check()?;
            for mcu_x in 0..mcus_x {
                if restarts.before_mcu(&mut reader, scan)? {
                    preds = [0; 4];
                }
                let first_column = mcu_x * luma_h;
                for &(c, luma) in &plan {
                    let (dc, ac) = tables[c];
                    match luma {
                        Some(offset) => {
                            let block = &mut band[first_column + offset];
                            decode_block(bmi2, &mut reader, dc, ac, &mut preds[c], block)?;
                        }
                        None => skip_block(bmi2, &mut reader, dc, ac)?,
                    }
                }
            }
            if reader.overran(scan.interval_end(restarts.interval)) {
                return Err(truncated());
            }
            for (r, row) in band.chunks_exact(stride).enumerate() {
                if mcu_y * luma_v + r < blocks_h {
                    sink.row(&row[..blocks_w])?;
                }
            }
        }
        Ok(())
    }

    fn progressive_scan(&mut self, header: &ScanHeader, scan: &ScanData) -> Result<()> {
        let dc_scan = header.ss == 0;
        self.check_tables(header, dc_scan && header.ah == 0, !dc_scan)?;
        if dc_scan {
            self.luma_seen = true;
            self.progressive_dc_scan(header, scan)
        } else {
            self.progressive_ac_scan(header, scan)
        }
    }

    /// Progressive DC scan, first or refining: MCU by MCU through the flat block plan (one
    /// branch pattern per MCU). A refinement takes the MCU's correction bits (one per block, ten
    /// at most) in one read.
    #[inline(never)]
    fn progressive_dc_scan(&mut self, header: &ScanHeader, scan: &ScanData) -> Result<()> {
        let (mcus_x, mcus_y, sizes) = self.scan_geometry(header);
        let (stride, _) = self.frame.padded_luma_blocks();
        let luma_pos = header
            .components
            .iter()
            .position(|&(i, _, _)| i == 0)
            .expect("scan has luma");
        let (luma_h, luma_v) = sizes[luma_pos];
        let plan = mcu_plan(&sizes, luma_pos, stride);
        let tables: Vec<Option<&DecodeTable>> = header
            .components
            .iter()
            .map(|&(_, dc, _)| self.dc[dc].as_ref())
            .collect();
        let (al, refine) = (header.al, header.ah != 0);
        let mut reader = BitReader::new(&scan.bytes, 0);
        let mut preds = [0i32; 4];
        let mut restarts = Restarts::new(self.restart_interval);
        for mcu_y in 0..mcus_y {
            self.cancel.check()?;
            for mcu_x in 0..mcus_x {
                if restarts.before_mcu(&mut reader, scan)? {
                    preds = [0; 4];
                }
                let first = mcu_y * luma_v * stride + mcu_x * luma_h;
                for &(_, luma) in &plan {
                    if let Some(offset) = luma {
                        prefetch(&self.plane, first + PREFETCH_AHEAD * luma_h + offset);
                    }
                }
                if refine {
                    reader.ensure(plan.len() as u32);
                    let mut bits = reader.take(plan.len() as u32) << (32 - plan.len());
                    for &(_, luma) in &plan {
                        if let (Some(offset), true) = (luma, bits & 0x8000_0000 != 0) {
                            self.plane[first + offset].coef[0] |= 1 << al;
                        }
                        bits <<= 1;
                    }
                } else {
                    for &(c, luma) in &plan {
                        let table = tables[c].expect("checked");
                        let block = luma.map(|offset| &mut self.plane[first + offset]);
                        dc_first(&mut reader, table, &mut preds[c], al, block)?;
                    }
                }
            }
            if reader.overran(scan.interval_end(restarts.interval)) {
                return Err(truncated());
            }
        }
        Ok(())
    }

    /// Progressive AC scan, first or refining. It holds luma alone (AC scans have one
    /// component), one block per MCU in raster order over the component's own blocks. An
    /// end-of-band run is passed over in one step where it changes nothing (first scans), and
    /// block by block only where it has correction bits to read (refinement).
    ///
    /// On x86-64 CPUs with BMI2 the whole loop is compiled a second time for them: `pdep`
    /// finds where a run ends and which coefficients a batch of correction bits refines in one
    /// instruction each, where the portable code walks bit by bit.
    fn progressive_ac_scan(&mut self, header: &ScanHeader, scan: &ScanData) -> Result<()> {
        #[cfg(target_arch = "x86_64")]
        if has_bmi2() {
            // SAFETY: the CPU reported BMI2, POPCNT and LZCNT.
            return unsafe { self.ac_scan_bmi2(header, scan) };
        }
        self.ac_scan::<false>(header, scan)
    }

    /// # Safety
    /// The CPU must support BMI2, POPCNT and LZCNT.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "bmi1,bmi2,popcnt,lzcnt")]
    #[inline(never)]
    unsafe fn ac_scan_bmi2(&mut self, header: &ScanHeader, scan: &ScanData) -> Result<()> {
        self.ac_scan::<true>(header, scan)
    }

    /// The AC scan loop; `BMI2` only inside [`Self::ac_scan_bmi2`].
    #[inline(always)]
    fn ac_scan<const BMI2: bool>(&mut self, header: &ScanHeader, scan: &ScanData) -> Result<()> {
        let table = self.ac[header.components[0].2].as_ref().expect("checked");
        let (blocks_w, blocks_h) = self.frame.component_blocks(0);
        let (stride, _) = self.frame.padded_luma_blocks();
        let mut reader = BitReader::new(&scan.bytes, 0);
        let mut eob_run = 0u32;
        let mut restarts = Restarts::new(self.restart_interval);
        let refine = header.ah != 0;
        let band = bit_range(header.ss, header.se + 1);
        let cancel = self.cancel;
        for row in self.plane.chunks_exact_mut(stride).take(blocks_h) {
            cancel.check()?;
            let row = &mut row[..blocks_w];
            let mut x = 0;
            while x < blocks_w {
                if restarts.before_mcu(&mut reader, scan)? {
                    eob_run = 0;
                }
                prefetch(row, x + PREFETCH_AHEAD);
                let block = &mut row[x];
                x += 1;
                if refine {
                    ac_refine::<BMI2>(&mut reader, table, header, band, &mut eob_run, block)?;
                } else {
                    ac_first(&mut reader, table, header, &mut eob_run, block)?;
                }
                if eob_run == 0 {
                    continue;
                }
                // The run goes on over the next blocks, as far as the row's end (the next row
                // comes round this loop again) and never past a restart marker, which ends it.
                let n = (eob_run as usize).min(blocks_w - x).min(restarts.left);
                if refine {
                    for i in x..x + n {
                        prefetch(row, i + PREFETCH_AHEAD);
                        let block = &mut row[i];
                        let nonzero = block.mask & band;
                        if nonzero != 0 {
                            refine_nonzero::<BMI2>(&mut reader, block, nonzero, 1 << header.al);
                        }
                    }
                }
                restarts.left -= n;
                eob_run -= n as u32;
                x += n;
            }
            if reader.overran(scan.interval_end(restarts.interval)) {
                return Err(truncated());
            }
        }
        Ok(())
    }

    /// Progressive: all scans are in; hand the plane to the sink row by row. (The scans kept
    /// each block's nonzero mask as they went: a coefficient, once nonzero, stays nonzero.)
    fn emit_plane(&mut self, sink: &mut impl LumaSink) -> Result<()> {
        let (stride, _) = self.frame.padded_luma_blocks();
        let (blocks_w, blocks_h) = self.frame.component_blocks(0);
        for row in self.plane.chunks_exact_mut(stride).take(blocks_h) {
            self.cancel.check()?;
            let row = &mut row[..blocks_w];
            // Every magnitude ORed together stays under 1024 exactly when each does (the AC
            // bound is all ones): a few vector instructions per block in the common case, and
            // the exact test (the DC may reach 2047) only for a row where something is large.
            let all = row.iter().fold(0u16, |all, block| {
                block
                    .coef
                    .iter()
                    .fold(all, |all, &c| all | c.unsigned_abs())
            });
            if i32::from(all) > MAX_AC && row.iter().any(out_of_range) {
                return Err(invalid(
                    "corrupt progressive data: a coefficient beyond the 8-bit range",
                ));
            }
            sink.row(row)?;
        }
        Ok(())
    }
}

/// How many blocks ahead of the one being decoded [`prefetch`] asks for.
const PREFETCH_AHEAD: usize = 4;

/// Asks the CPU to bring `items[at]` (when it exists) into the cache, for loops that visit items
/// of memory far larger than the cache, each for a few nanoseconds: a progressive scan's blocks
/// (the first touch of a block's nonzero mask stalled the decoding of the symbols waiting on
/// it), a turned image's kept blocks.
#[inline(always)]
pub(crate) fn prefetch<T>(items: &[T], at: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(item) = items.get(at) {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        let first = (item as *const T).cast::<i8>();
        // Every cache line the item spans: one every 64 bytes, and its last byte's.
        for offset in (0..size_of::<T>()).step_by(64).chain([size_of::<T>() - 1]) {
            // SAFETY: a prefetch is a hint that never faults; the address is inside `item`.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(first.wrapping_add(offset)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (items, at);
}

/// An MCU's blocks in coding order, flat: which scan component, and for luma where the block
/// goes relative to the MCU's first block in a plane `stride` blocks wide. One flat loop repeats
/// the same branch pattern every MCU, which the predictor learns.
fn mcu_plan(
    sizes: &[(usize, usize)],
    luma_pos: usize,
    stride: usize,
) -> Vec<(usize, Option<usize>)> {
    sizes
        .iter()
        .enumerate()
        .flat_map(|(c, &(h, v))| {
            (0..v).flat_map(move |by| {
                (0..h).map(move |bx| (c, (c == luma_pos).then_some(by * stride + bx)))
            })
        })
        .collect()
}

/// Whether a block holds a coefficient no 8-bit JPEG can hold.
fn out_of_range(block: &Block) -> bool {
    i32::from(block.coef[0]).abs() > MAX_DC
        || block.coef[1..].iter().any(|&c| i32::from(c).abs() > MAX_AC)
}

fn truncated() -> Error {
    invalid("truncated or corrupt entropy-coded data: the scan needs more bits than the file holds")
}

/// Counts MCUs to the next restart marker and moves the reader there.
struct Restarts {
    every: usize,
    /// MCUs left in the current interval (never running out without intervals).
    left: usize,
    /// The interval being read: 0 from the scan's start, then one more after each marker.
    interval: usize,
}

impl Restarts {
    fn new(every: usize) -> Self {
        Restarts {
            every,
            left: if every > 0 { every } else { usize::MAX },
            interval: 0,
        }
    }

    /// Called before each MCU. True when a new interval starts there (predictions reset), after
    /// checking that the one just finished held all the bits it was read for.
    fn before_mcu(&mut self, reader: &mut BitReader, scan: &ScanData) -> Result<bool> {
        let starts = self.left == 0;
        if starts {
            if reader.overran(scan.interval_end(self.interval)) {
                return Err(truncated());
            }
            let next = *scan.restarts.get(self.interval).ok_or_else(|| {
                invalid(format!(
                    "expected restart marker {} in the entropy-coded data, found none",
                    self.interval + 1
                ))
            })?;
            self.interval += 1;
            reader.restart_at(next);
            self.left = self.every;
        }
        self.left -= 1;
        Ok(starts)
    }
}

/// Decodes one DC difference: the magnitude category, then its bits.
#[inline(always)]
fn dc_diff(reader: &mut BitReader, table: &DecodeTable) -> Result<i32> {
    reader.ensure(32);
    let (size, len) = table.decode(reader.peek())?;
    reader.consume(len);
    let size = u32::from(size);
    if size > 11 {
        return Err(invalid(format!(
            "a DC difference of {size} bits, at most 11 exist in 8-bit JPEG"
        )));
    }
    Ok(if size == 0 {
        0
    } else {
        extend(reader.take(size), size)
    })
}

#[inline(always)]
fn add_dc(pred: &mut i32, diff: i32) -> Result<i32> {
    *pred += diff;
    if pred.abs() > MAX_DC {
        return Err(invalid(format!(
            "corrupt entropy-coded data: a DC coefficient of {pred}"
        )));
    }
    Ok(*pred)
}

/// Sequential: one luma block, into `block` (zeroed first).
///
/// Both twins below are kept out of line so that the loop owns the registers: inlined into the MCU loop, the table
/// pointer was reloaded from the stack for every coefficient. One branch-free refill serves two
/// steps: a step of the pair table takes at most PAIR_BITS (11), a single symbol at most 26
/// bits (16 of code, 10 of magnitude), and a refill leaves at least 56; a conditional refill per
/// step mispredicted often enough to cost more.
#[inline(always)]
fn decode_block(
    bmi2: bool,
    reader: &mut BitReader,
    dc: &DecodeTable,
    ac: &DecodeTable,
    pred: &mut i32,
    block: &mut Block,
) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if bmi2 {
        // SAFETY: `bmi2` is what `has_bmi2` found.
        return unsafe { decode_block_bmi2(reader, dc, ac, pred, block) };
    }
    let _ = bmi2;
    decode_block_portable(reader, dc, ac, pred, block)
}

#[inline(never)]
fn decode_block_portable(
    outer: &mut BitReader,
    dc: &DecodeTable,
    ac: &DecodeTable,
    pred: &mut i32,
    block: &mut Block,
) -> Result<()> {
    decode_block_body(outer, dc, ac, pred, block)
}

/// [`decode_block_body`] compiled for BMI2: its variable shifts (the bit reader's) are one
/// instruction there instead of three.
///
/// # Safety
/// The CPU must support BMI2, POPCNT and LZCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi1,bmi2,popcnt,lzcnt")]
#[inline(never)]
unsafe fn decode_block_bmi2(
    outer: &mut BitReader,
    dc: &DecodeTable,
    ac: &DecodeTable,
    pred: &mut i32,
    block: &mut Block,
) -> Result<()> {
    decode_block_body(outer, dc, ac, pred, block)
}

#[inline(always)]
fn decode_block_body(
    outer: &mut BitReader,
    dc: &DecodeTable,
    ac: &DecodeTable,
    pred: &mut i32,
    block: &mut Block,
) -> Result<()> {
    // Work on a copy of the reader so that its state lives in registers, not behind a pointer.
    let mut bits = *outer;
    let reader = &mut bits;
    block.coef = [0; 64];
    let diff = dc_diff(reader, dc)?;
    block.coef[0] = add_dc(pred, diff)? as i16;
    let pairs = &ac.steps().pairs;
    let mut k = 1usize;
    'block: loop {
        reader.refill();
        for _ in 0..2 {
            let entry = pairs[(reader.peek() >> (64 - PAIR_BITS)) as usize];
            let first = k + ((entry >> PAIR_FIRST_SHIFT) & 63) as usize;
            let second = k + ((entry >> PAIR_SECOND_SHIFT) & 63) as usize;
            let advance = ((entry >> PAIR_ADVANCE_SHIFT) & 63) as usize;
            let ended = entry & PAIR_ENDED != 0;
            // An entry may read past the block's last coefficient into the next block's bits
            // (a block that reaches position 63 has no end-of-block code): one symbol at a
            // time there.
            if entry != 0 && second <= 63 && !(ended && k + advance > 63) {
                reader.consume((entry & 31) as u32);
                block.coef[first] = (entry >> 32) as u16 as i16;
                block.coef[second] = (entry >> 48) as u16 as i16;
                k += advance;
                if ended || k == 64 {
                    break 'block;
                }
                continue;
            }
            // One symbol at a time: a long code, a run of 16 zeros, or the block's last step.
            let (symbol, len) = ac.decode(reader.peek())?;
            reader.consume(len);
            let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
            if size == 0 {
                if run != 15 {
                    break 'block; // end of block
                }
                k += 16;
                if k >= 64 {
                    break 'block;
                }
                continue;
            }
            if size > 10 {
                return Err(invalid(format!(
                    "an AC coefficient of {size} bits, at most 10 exist in 8-bit JPEG"
                )));
            }
            let value = extend(reader.take(size), size) as i16;
            k += run;
            if k > 63 {
                return Err(coefficient_overflow());
            }
            block.coef[k] = value;
            k += 1;
            if k == 64 {
                break 'block;
            }
        }
    }
    if k > 64 {
        return Err(coefficient_overflow());
    }
    block.mask = u64::MAX;
    *outer = bits;
    Ok(())
}

/// Sequential: walks over one block of another component, keeping nothing (out of line and
/// refilling as [`decode_block`] does). Most steps take several symbols at once from the
/// table's skip entries: a chroma block is typically a few small coefficients and its end.
#[inline(always)]
fn skip_block(
    bmi2: bool,
    reader: &mut BitReader,
    dc: &DecodeTable,
    ac: &DecodeTable,
) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if bmi2 {
        // SAFETY: `bmi2` is what `has_bmi2` found.
        return unsafe { skip_block_bmi2(reader, dc, ac) };
    }
    let _ = bmi2;
    skip_block_portable(reader, dc, ac)
}

#[inline(never)]
fn skip_block_portable(reader: &mut BitReader, dc: &DecodeTable, ac: &DecodeTable) -> Result<()> {
    skip_block_body(reader, dc, ac)
}

/// [`skip_block_body`] compiled for BMI2, as [`decode_block_bmi2`].
///
/// # Safety
/// The CPU must support BMI2, POPCNT and LZCNT.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "bmi1,bmi2,popcnt,lzcnt")]
#[inline(never)]
unsafe fn skip_block_bmi2(
    reader: &mut BitReader,
    dc: &DecodeTable,
    ac: &DecodeTable,
) -> Result<()> {
    skip_block_body(reader, dc, ac)
}

#[inline(always)]
fn skip_block_body(outer: &mut BitReader, dc: &DecodeTable, ac: &DecodeTable) -> Result<()> {
    let mut bits = *outer;
    let reader = &mut bits;
    dc_diff(reader, dc)?;
    let skip = &ac.steps().skip;
    let mut k = 1usize;
    loop {
        // A refill leaves 56 bits: room for a skip entry (12) and one symbol (26) after it.
        reader.refill();
        let entry = skip[(reader.peek() >> (64 - SKIP_BITS)) as usize];
        let (advanced, ended) = (usize::from((entry >> 4) & 0x7F), entry & SKIP_ENDED != 0);
        // A block may end on its last coefficient without an end-of-block code; an entry that
        // goes on past position 64 (or ends with a code read there) took the next block's bits
        // as this one's. Step one symbol at a time then.
        let fits = if ended {
            k + advanced < 64
        } else {
            k + advanced <= 64
        };
        if entry != 0 && fits {
            reader.consume(u32::from(entry & 15));
            k += advanced;
            if ended || k == 64 {
                break;
            }
        }
        let (symbol, len) = ac.decode(reader.peek())?;
        let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
        reader.consume(len + size);
        match (run, size) {
            (15, 0) => k += 16,
            (_, 0) => break, // end of block
            _ => k += run + 1,
        }
        if k >= 64 {
            break;
        }
    }
    if k > 64 {
        return Err(coefficient_overflow());
    }
    *outer = bits;
    Ok(())
}

fn coefficient_overflow() -> Error {
    invalid("corrupt entropy-coded data: a run of coefficients past the end of its block")
}

/// Progressive, first DC scan.
fn dc_first(
    reader: &mut BitReader,
    table: &DecodeTable,
    pred: &mut i32,
    al: u8,
    block: Option<&mut Block>,
) -> Result<()> {
    let diff = dc_diff(reader, table)?;
    add_dc(pred, diff)?;
    if let Some(block) = block {
        let value = *pred << al;
        if value.abs() > MAX_DC {
            return Err(invalid(format!(
                "corrupt progressive data: a DC coefficient of {value}"
            )));
        }
        block.coef[0] = value as i16;
    }
    Ok(())
}

/// Reads an end-of-band run length: `1 << r` plus `r` more bits.
fn eob_run_length(reader: &mut BitReader, r: u32) -> u32 {
    (1 << r) + reader.take_checked(r)
}

/// Progressive, first AC scan of a band (G.1.2.2).
#[inline(always)]
fn ac_first(
    reader: &mut BitReader,
    table: &DecodeTable,
    scan: &ScanHeader,
    eob_run: &mut u32,
    block: &mut Block,
) -> Result<()> {
    if *eob_run > 0 {
        *eob_run -= 1;
        return Ok(());
    }
    let fused_entries = table.fused();
    let mut k = scan.ss;
    while k <= scan.se {
        reader.ensure(32);
        let bits = reader.peek();
        let fused = fused_entries[(bits >> (64 - LOOKAHEAD)) as usize];
        let (run, value) = if fused != 0 {
            reader.consume(fused & 0xFF);
            (
                ((fused >> 8) & 15) as usize,
                i32::from((fused >> 16) as u16 as i16),
            )
        } else {
            let (symbol, len) = table.decode(bits)?;
            reader.consume(len);
            let (run, size) = (usize::from(symbol >> 4), u32::from(symbol & 15));
            if size == 0 {
                if run == 15 {
                    k += 16;
                    continue;
                }
                *eob_run = eob_run_length(reader, run as u32) - 1;
                break;
            }
            (run, extend(reader.take(size), size))
        };
        k += run;
        if k > scan.se {
            return Err(coefficient_overflow());
        }
        let value = value << scan.al;
        if value.abs() > MAX_AC {
            return Err(invalid(format!(
                "corrupt progressive data: an AC coefficient of {value}"
            )));
        }
        block.coef[k] = value as i16;
        block.mask |= 1 << k;
        k += 1;
    }
    Ok(())
}

/// Bits `from..to` (to at most 64) set.
#[inline(always)]
fn bit_range(from: usize, to: usize) -> u64 {
    from_bit(u64::MAX, from) & !from_bit(u64::MAX, to)
}

/// The bits of `set` from bit `from` up (none when `from` is 64).
#[inline(always)]
fn from_bit(set: u64, from: usize) -> u64 {
    set & u64::MAX.checked_shl(from as u32).unwrap_or(0)
}

/// Reads one correction bit for each coefficient in `nonzero` (ascending), several bits per read,
/// and adds `p1` to the magnitude where the bit says so and that bit of the coefficient is still
/// clear (G.1.2.3). Branch-free: the correction bits are close to random, a branch on each one
/// mispredicted every other time.
#[inline(always)]
fn refine_nonzero<const BMI2: bool>(
    reader: &mut BitReader,
    block: &mut Block,
    mut nonzero: u64,
    p1: i16,
) {
    while nonzero != 0 {
        let n = nonzero.count_ones().min(32);
        reader.ensure(32);
        let taken = reader.take(n);
        #[cfg(target_arch = "x86_64")]
        if BMI2 {
            // The bits are read first-coefficient-first from the top; `pdep` wants the first
            // at the bottom. What it deposits is where a bit says refine.
            let bits = u64::from(taken.reverse_bits() >> (32 - n));
            let (batch, mut refined) = (
                deposit(u64::from(u32::MAX >> (32 - n)), nonzero),
                deposit(bits, nonzero),
            );
            nonzero &= !batch;
            while refined != 0 {
                let k = refined.trailing_zeros() as usize;
                refined &= refined - 1;
                let c = block.coef[k];
                let sign = c >> 15;
                block.coef[k] = c.wrapping_add(((p1 & !c) ^ sign) - sign);
            }
            continue;
        }
        let mut bits = taken << (32 - n);
        for _ in 0..n {
            let k = nonzero.trailing_zeros() as usize;
            nonzero &= nonzero - 1;
            let c = block.coef[k];
            let add = (p1 & !c) * (bits >> 31) as i16;
            let sign = c >> 15;
            block.coef[k] = c.wrapping_add((add ^ sign) - sign);
            bits <<= 1;
        }
    }
}

/// The low bits of `bits` spread, lowest first, over the set bits of `mask` (`pdep`).
///
/// Only ever called inside functions compiled for BMI2, reached after [`has_bmi2`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn deposit(bits: u64, mask: u64) -> u64 {
    // SAFETY: see above; every caller is instantiated with BMI2 only under `ac_scan_bmi2`.
    unsafe { std::arch::x86_64::_pdep_u64(bits, mask) }
}

/// Whether the CPU has what the `_bmi2` twins of the entropy coder are compiled for.
pub(crate) fn has_bmi2() -> bool {
    #[cfg(target_arch = "x86_64")]
    let found = std::arch::is_x86_feature_detected!("bmi2")
        && std::arch::is_x86_feature_detected!("popcnt");
    #[cfg(not(target_arch = "x86_64"))]
    let found = false;
    found
}

/// The lowest set bit of `set` after its first `n`, alone (0 when `set` has no more).
#[inline(always)]
fn nth_set<const BMI2: bool>(set: u64, n: u32) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if BMI2 {
        return deposit(1 << n, set);
    }
    let mut set = set;
    for _ in 0..n {
        set &= set.wrapping_sub(1);
    }
    set & set.wrapping_neg()
}

/// Progressive, refining AC scan of a band (G.1.2.3; libjpeg's `decode_mcu_AC_refine`). The
/// block's nonzero mask finds each run's end in one step and batches the correction bits of the
/// coefficients passed on the way, instead of walking the band one coefficient at a time.
/// `band` holds bits `ss..=se`. Most symbols (a run and a one-bit coefficient) come with their
/// sign bit from one lookup in the fused table.
#[inline(always)]
fn ac_refine<const BMI2: bool>(
    reader: &mut BitReader,
    table: &DecodeTable,
    scan: &ScanHeader,
    band: u64,
    eob_run: &mut u32,
    block: &mut Block,
) -> Result<()> {
    let p1 = 1i16 << scan.al;
    // The band's positions not passed yet.
    let mut rest = band;
    if *eob_run == 0 {
        let fused_entries = table.fused();
        while rest != 0 {
            reader.ensure(32);
            let bits = reader.peek();
            let fused = fused_entries[(bits >> (64 - LOOKAHEAD)) as usize];
            let sign = (fused >> 16) as u16 as i16;
            let (run, value) = if fused != 0 && sign.unsigned_abs() == 1 {
                reader.consume(fused & 0xFF);
                ((fused >> 8) & 15, sign * p1)
            } else {
                let (symbol, len) = table.decode(bits)?;
                reader.consume(len);
                let (run, size) = (u32::from(symbol >> 4), symbol & 15);
                let mut value = 0i16;
                if size != 0 {
                    if size != 1 {
                        return Err(invalid(format!(
                            "corrupt progressive refinement: a coefficient of {size} bits, expected 1"
                        )));
                    }
                    value = if reader.bit() { p1 } else { -p1 };
                } else if run != 15 {
                    *eob_run = eob_run_length(reader, run);
                    break;
                }
                (run, value)
            };
            // The run ends at the (run + 1)-th coefficient still zero from here on; the nonzero
            // ones passed on the way each take a correction bit.
            let target = nth_set::<BMI2>(!block.mask & rest, run);
            if target == 0 {
                if value != 0 {
                    return Err(coefficient_overflow());
                }
                refine_nonzero::<BMI2>(reader, block, block.mask & rest, p1);
                rest = 0;
                break;
            }
            let t = target.trailing_zeros() as usize;
            let passed = target - 1;
            refine_nonzero::<BMI2>(reader, block, block.mask & rest & passed, p1);
            if value != 0 {
                block.coef[t] = value;
                block.mask |= 1 << t;
            }
            rest &= !(passed | target);
        }
    }
    if *eob_run > 0 {
        refine_nonzero::<BMI2>(reader, block, block.mask & rest, p1);
        *eob_run -= 1;
    }
    Ok(())
}

// Only x86_64 has the BMI2 twins these tests compare.
#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The BMI2 twins (`pdep`) of the run search and of the correction-bit batch do what
    /// the portable bit-by-bit code does, on any block, mask and bits. A CPU without BMI2 runs
    /// only the portable code: the test says so through the shared skip log.
    #[test]
    fn bmi2_refinement_equals_the_portable_code() {
        if !has_bmi2() {
            crate::luma::note_untested_without("BMI2", "progressive refinement");
            return;
        }
        proptest!(|(
            coef in proptest::collection::vec(-1023i16..=1023, 64),
            nonzero in any::<u64>(),
            zeros in any::<u64>(),
            run in 0u32..16,
            data in proptest::collection::vec(any::<u8>(), 16),
            al in 0u8..4
        )| {
            // SAFETY: the CPU reported BMI2.
            unsafe { check_bmi2(&coef, nonzero, zeros, run, &data, al) }
        });
    }

    /// # Safety
    /// The CPU must support BMI2, POPCNT and LZCNT.
    #[target_feature(enable = "bmi1,bmi2,popcnt,lzcnt")]
    unsafe fn check_bmi2(coef: &[i16], nonzero: u64, zeros: u64, run: u32, data: &[u8], al: u8) {
        assert_eq!(nth_set::<true>(zeros, run), nth_set::<false>(zeros, run));
        let mut padded = data.to_vec();
        padded.resize(data.len() + 8, 0);
        let block = Block {
            coef: coef.try_into().expect("64 coefficients"),
            mask: nonzero,
        };
        let p1 = 1i16 << al;
        let (mut portable, mut bmi2) = (block, block);
        let (mut r1, mut r2) = (BitReader::new(&padded, 0), BitReader::new(&padded, 0));
        refine_nonzero::<false>(&mut r1, &mut portable, nonzero, p1);
        refine_nonzero::<true>(&mut r2, &mut bmi2, nonzero, p1);
        assert_eq!(portable.coef, bmi2.coef);
        assert_eq!(r1.consumed_bits(), r2.consumed_bits());
    }
}
