//! Entropy-coded bits: extracting a scan's data (undoing byte stuffing, splitting at restart
//! markers), reading it MSB-first, and writing it with stuffing.

use super::markers::invalid;
use crate::error::Result;

/// Zero bytes after a scan's data, so that a refill may always load eight bytes; a reader that
/// consumes them has run past the data, which [`BitReader::overran`] reports.
const PADDING: usize = 8;

/// One scan's entropy-coded data with the stuffed zero bytes removed, and where each restart
/// interval starts.
#[derive(Default)]
pub(crate) struct ScanData {
    pub bytes: Vec<u8>,
    /// Offsets into `bytes` where intervals 1, 2, ... start (interval 0 starts at 0).
    pub restarts: Vec<usize>,
    /// Offset of the end of the data (before the padding).
    pub end: usize,
}

impl ScanData {
    /// Reads the scan data starting at `data[start..]` into `self`, reusing its buffers.
    /// Returns the position of the marker that ends the scan.
    pub fn extract(&mut self, data: &[u8], start: usize) -> Result<usize> {
        self.bytes.clear();
        self.restarts.clear();
        // At most the rest of the file: one allocation, never a copy to grow.
        self.bytes
            .reserve(data.len().saturating_sub(start) + PADDING);
        let mut pos = start;
        loop {
            let Some(ff) = memchr::memchr(0xFF, &data[pos..]) else {
                return Err(invalid(
                    "truncated: the file ends inside entropy-coded data",
                ));
            };
            self.bytes.extend_from_slice(&data[pos..pos + ff]);
            pos += ff;
            // Fill bytes: any number of FF before the byte that says what this is.
            let mut next = pos + 1;
            while data.get(next) == Some(&0xFF) {
                next += 1;
            }
            match data.get(next) {
                Some(0x00) => {
                    self.bytes.push(0xFF);
                    pos = next + 1;
                }
                Some(0xD0..=0xD7) => {
                    self.restarts.push(self.bytes.len());
                    pos = next + 1;
                }
                Some(_) => {
                    self.end = self.bytes.len();
                    self.bytes.resize(self.end + PADDING, 0);
                    return Ok(pos);
                }
                None => {
                    return Err(invalid(
                        "truncated: the file ends inside entropy-coded data",
                    ));
                }
            }
        }
    }

    /// Where interval `i` ends.
    pub fn interval_end(&self, i: usize) -> usize {
        self.restarts.get(i).copied().unwrap_or(self.end)
    }
}

/// Skips a scan's entropy-coded data without decoding it; returns the position of the marker
/// that ends it.
pub(crate) fn skip_scan(data: &[u8], start: usize) -> Result<usize> {
    let mut pos = start;
    loop {
        let ff = memchr::memchr(0xFF, &data[pos..])
            .ok_or_else(|| invalid("truncated: the file ends inside entropy-coded data"))?;
        pos += ff;
        let mut next = pos + 1;
        while data.get(next) == Some(&0xFF) {
            next += 1;
        }
        match data.get(next) {
            Some(0x00 | 0xD0..=0xD7) => pos = next + 1,
            Some(_) => return Ok(pos),
            None => {
                return Err(invalid(
                    "truncated: the file ends inside entropy-coded data",
                ));
            }
        }
    }
}

/// Reads bits MSB-first from destuffed scan data. `Copy`, so that a hot loop can work on a
/// copy held in registers and write it back when done.
#[derive(Clone, Copy)]
pub(crate) struct BitReader<'a> {
    data: &'a [u8],
    /// The next byte to load.
    pos: usize,
    /// Valid bits at the top; below them, bytes that the next refill loads again.
    buf: u64,
    /// How many bits at the top of `buf` are valid.
    bits: u32,
}

impl<'a> BitReader<'a> {
    pub fn new(data: &'a [u8], start: usize) -> Self {
        BitReader {
            data,
            pos: start,
            buf: 0,
            bits: 0,
        }
    }

    /// Makes at least 56 bits valid, without a branch (F. Giesen's "variant 4" refill): one
    /// 8-byte load. Past the end of the data the load is clamped onto the zero padding, so the
    /// reader sees zero bits while `pos` keeps counting and `overran` reports the overrun.
    #[inline(always)]
    pub fn refill(&mut self) {
        let at = self.pos.min(self.data.len() - PADDING);
        let word = u64::from_be_bytes(self.data[at..at + 8].try_into().expect("8 bytes"));
        self.buf |= word >> self.bits;
        self.pos += ((63 - self.bits) >> 3) as usize;
        self.bits |= 56;
    }

    /// Refills when fewer than `n` bits are valid.
    #[inline(always)]
    pub fn ensure(&mut self, n: u32) {
        if self.bits < n {
            self.refill();
        }
    }

    /// The valid bits, MSB-aligned (only the top `available()` are meaningful).
    #[inline(always)]
    pub fn peek(&self) -> u64 {
        self.buf
    }

    #[inline(always)]
    pub fn consume(&mut self, n: u32) {
        debug_assert!(n <= self.bits);
        self.buf <<= n;
        self.bits -= n;
    }

    /// Takes `n` bits (1 to 32) as a number. The caller has ensured they are valid.
    #[inline(always)]
    pub fn take(&mut self, n: u32) -> u32 {
        debug_assert!((1..=32).contains(&n) && n <= self.bits);
        let v = (self.buf >> (64 - n)) as u32;
        self.consume(n);
        v
    }

    /// Takes `n` bits (0 to 16), refilling as needed.
    #[inline(always)]
    pub fn take_checked(&mut self, n: u32) -> u32 {
        if n == 0 {
            return 0;
        }
        self.ensure(n);
        self.take(n)
    }

    /// Takes one bit.
    #[inline(always)]
    pub fn bit(&mut self) -> bool {
        self.ensure(1);
        self.take(1) == 1
    }

    /// Bits consumed from the start of the data.
    pub fn consumed_bits(&self) -> usize {
        self.pos * 8 - self.bits as usize
    }

    /// Whether more bits were consumed than the data up to byte `end` holds.
    pub fn overran(&self, end: usize) -> bool {
        self.consumed_bits() > end * 8
    }

    /// Starts again at byte `start` (a restart interval), dropping any bits left.
    pub fn restart_at(&mut self, start: usize) {
        *self = BitReader::new(self.data, start);
    }
}

/// Writes entropy-coded bits MSB-first, stuffing a zero byte after every 0xFF.
///
/// The output buffer is kept initialised ahead of the write position, and each block is written
/// through a [`BitCursor`] whose state lives in registers: writing through a `Vec` inside a
/// struct made the compiler store the bit accumulator back to memory after every byte store
/// (a byte store may alias anything).
pub(crate) struct BitWriter {
    buf: Vec<u8>,
    /// Bytes written; `buf` beyond it is zeroed room.
    pos: usize,
    acc: u64,
    count: u32,
}

/// The most bytes one block can take: 64 codes of at most 27 bits, each byte possibly
/// stuffed, with room to spare.
const BLOCK_BYTES: usize = 1024;

impl BitWriter {
    /// Continues after `head` (the file's segments so far).
    pub fn new(head: Vec<u8>) -> Self {
        let pos = head.len();
        BitWriter {
            buf: head,
            pos,
            acc: 0,
            count: 0,
        }
    }

    /// A cursor with room for one block's bytes.
    #[inline(always)]
    pub fn cursor(&mut self) -> BitCursor<'_> {
        if self.buf.len() - self.pos < BLOCK_BYTES {
            self.grow();
        }
        BitCursor {
            buf: &mut self.buf[..],
            pos: self.pos,
            acc: self.acc,
            count: self.count,
        }
    }

    /// Makes room: by half (at least 64 KiB; zeroing is paid once per output byte), but never
    /// past the capacity while that has room for a block, so the buffer reallocates only when
    /// the output fills it and its capacity simply doubles (which `estimate` counts on).
    #[cold]
    fn grow(&mut self) {
        let wanted = self.buf.len() + (self.buf.len() / 2).max(64 << 10);
        let capacity = self.buf.capacity();
        let grown = if capacity - self.buf.len() >= BLOCK_BYTES {
            wanted.min(capacity)
        } else {
            wanted
        };
        self.buf.resize(grown, 0);
    }

    /// Takes back a cursor's position and pending bits.
    #[inline(always)]
    pub fn settle(&mut self, state: CursorState) {
        (self.pos, self.acc, self.count) = (state.pos, state.acc, state.count);
    }

    /// Pads the last byte with one bits (as the standard asks) and returns the output.
    pub fn finish(mut self) -> Vec<u8> {
        let mut cursor = self.cursor();
        let pad = (8 - cursor.count % 8) % 8;
        cursor.put((1 << pad) - 1, pad);
        let count = cursor.count;
        let tail = if count == 0 {
            0
        } else {
            cursor.acc << (64 - count)
        };
        cursor.pos = write_stuffed(
            cursor.buf,
            cursor.pos,
            &tail.to_be_bytes()[..(count / 8) as usize],
        );
        let state = cursor.state();
        self.settle(state);
        self.buf.truncate(self.pos);
        self.buf
    }
}

/// Where a [`BitCursor`] left off.
pub(crate) struct CursorState {
    pos: usize,
    acc: u64,
    count: u32,
}

/// Writes one block's bits into room the [`BitWriter`] made.
pub(crate) struct BitCursor<'a> {
    buf: &'a mut [u8],
    pos: usize,
    /// Pending bits, right-aligned; only the low `count` matter.
    acc: u64,
    count: u32,
}

/// Writes `bytes` at `pos`, a zero after each 0xFF; returns the new position. A free function
/// rather than a cursor method so that calling it never takes the cursor's address (which would
/// keep the cursor out of registers).
#[cold]
fn write_stuffed(buf: &mut [u8], mut pos: usize, bytes: &[u8]) -> usize {
    for &byte in bytes {
        buf[pos] = byte;
        pos += 1;
        if byte == 0xFF {
            buf[pos] = 0;
            pos += 1;
        }
    }
    pos
}

/// Whether any byte of `word` is 0xFF: its complement then has a zero byte.
#[inline(always)]
fn has_ff_byte(word: u64) -> bool {
    let inverted = !word;
    inverted.wrapping_sub(0x0101_0101_0101_0101) & !inverted & 0x8080_8080_8080_8080 != 0
}

impl BitCursor<'_> {
    /// Appends the low `len` bits of `bits` (len at most 32). Eight bytes go out at a time.
    #[inline(always)]
    pub fn put(&mut self, bits: u32, len: u32) {
        debug_assert!(len <= 32 && (len == 32 || bits >> len == 0));
        let total = self.count + len;
        if total < 64 {
            self.acc = (self.acc << len) | u64::from(bits);
            self.count = total;
        } else {
            // The first `len - spill` bits complete a 64-bit word; `spill` bits stay.
            let spill = total - 64;
            let word = (self.acc << (len - spill)) | (u64::from(bits) >> spill);
            if has_ff_byte(word) {
                self.pos = write_stuffed(self.buf, self.pos, &word.to_be_bytes());
            } else {
                self.buf[self.pos..self.pos + 8].copy_from_slice(&word.to_be_bytes());
                self.pos += 8;
            }
            self.acc = u64::from(bits);
            self.count = spill;
        }
    }

    pub fn state(self) -> CursorState {
        CursorState {
            pos: self.pos,
            acc: self.acc,
            count: self.count,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_bits_read_back_through_stuffing_and_restarts() {
        // Write a pattern that produces 0xFF bytes, with a restart marker in the middle.
        let mut writer = BitWriter::new(vec![]);
        let mut w = writer.cursor();
        let fields: Vec<(u32, u32)> = (0..200u32)
            .map(|i| {
                (
                    i.wrapping_mul(2654435761) >> (32 - (i % 17 + 1)),
                    i % 17 + 1,
                )
            })
            .collect();
        for &(v, n) in &fields {
            w.put(v, n);
        }
        w.put(0xFFFF_FFFF, 32);
        let state = w.state();
        writer.settle(state);
        let mut stream = writer.finish();
        let first_len = stream.len();
        stream.extend_from_slice(&[0xFF, 0xD0, 0x12, 0xFF, 0x00, 0xFF, 0xD9]);
        let mut scan = ScanData::default();
        let marker_at = scan.extract(&stream, 0).unwrap();
        assert_eq!(&stream[marker_at..marker_at + 2], &[0xFF, 0xD9]);
        assert_eq!(scan.restarts.len(), 1);
        let mut r = BitReader::new(&scan.bytes, 0);
        for &(v, n) in &fields {
            r.ensure(n);
            assert_eq!(r.take(n), v);
        }
        r.ensure(32);
        assert_eq!(r.take(32), 0xFFFF_FFFF);
        assert!(!r.overran(scan.interval_end(0)));
        r.restart_at(scan.restarts[0]);
        r.ensure(16);
        assert_eq!(r.take(16), 0x12FF);
        assert!(!r.overran(scan.end));
        r.ensure(8);
        r.take(8);
        assert!(r.overran(scan.end));
        // The premise: the writer really stuffed a zero after some 0xFF data bytes.
        assert!(
            stream[..first_len].windows(2).any(|w| w == [0xFF, 0x00]),
            "the pattern wrote no stuffed 0xFF"
        );
    }

    #[test]
    fn data_without_an_end_marker_is_truncated() {
        let mut scan = ScanData::default();
        assert!(scan.extract(&[1, 2, 3, 0xFF, 0x00, 4], 0).is_err());
        assert!(skip_scan(&[1, 2, 3, 0xFF], 0).is_err());
    }
}
