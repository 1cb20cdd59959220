//! The entropy decoder, reached with a well-formed frame around fuzzed entropy-coded data, so
//! that nearly every run gets past the headers: baseline or progressive, any sampling, restart
//! intervals, and scan scripts and Huffman tables taken from the input.
#![no_main]

use cloudimg_engine::{Limits, Options, Quality, convert};
use libfuzzer_sys::fuzz_target;

fn segment(out: &mut Vec<u8>, marker: u8, payload: &[u8]) {
    out.extend_from_slice(&[0xFF, marker]);
    out.extend_from_slice(&((payload.len() + 2) as u16).to_be_bytes());
    out.extend_from_slice(payload);
}

/// Takes `n` bytes from the front of `data` (fewer at its end).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, tail) = data.split_at(n.min(data.len()));
    *data = tail;
    head
}

fn byte(data: &mut &[u8]) -> u8 {
    take(data, 1).first().copied().unwrap_or(0)
}

/// A Huffman table from the input: 16 counts (kept small) and the symbols they need.
fn dht(data: &mut &[u8], class_id: u8) -> Vec<u8> {
    let mut payload = vec![class_id];
    let counts: Vec<u8> = (0..16).map(|_| byte(data) % 8).collect();
    let total: usize = counts.iter().map(|&c| usize::from(c)).sum();
    payload.extend_from_slice(&counts);
    let symbols = take(data, total);
    payload.extend_from_slice(symbols);
    payload.resize(17 + total, 0);
    payload
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let flags = byte(&mut data);
    let progressive = flags & 1 == 1;
    let components: u8 = if flags & 2 == 0 { 1 } else { 3 };
    let (width, height) = (u16::from(byte(&mut data)) + 1, u16::from(byte(&mut data)) + 1);
    let luma_sampling = [0x11, 0x21, 0x12, 0x22][usize::from(flags >> 2 & 3)];
    let restart = if flags & 16 == 0 { 0 } else { u16::from(byte(&mut data) % 8) };

    let mut jpeg = vec![0xFF, 0xD8];
    let mut dqt = vec![0u8];
    dqt.extend((0..64).map(|k| 1 + (k % 7) as u8));
    segment(&mut jpeg, 0xDB, &dqt);
    let mut sof = vec![8];
    sof.extend_from_slice(&height.to_be_bytes());
    sof.extend_from_slice(&width.to_be_bytes());
    sof.push(components);
    for c in 0..components {
        sof.extend_from_slice(&[c + 1, if c == 0 { luma_sampling } else { 0x11 }, 0]);
    }
    segment(&mut jpeg, if progressive { 0xC2 } else { 0xC0 }, &sof);
    if restart > 0 {
        segment(&mut jpeg, 0xDD, &restart.to_be_bytes());
    }
    // Up to six scans, each with fresh tables and scan parameters from the input.
    let scans = if progressive { 1 + byte(&mut data) % 6 } else { 1 };
    for _ in 0..scans {
        segment(&mut jpeg, 0xC4, &dht(&mut data, 0x00));
        segment(&mut jpeg, 0xC4, &dht(&mut data, 0x10));
        let (ss, se, approximation) = if progressive {
            let ss = byte(&mut data) % 64;
            (ss, if ss == 0 { 0 } else { ss + byte(&mut data) % (64 - ss) }, byte(&mut data) & 0x33)
        } else {
            (0, 63, 0)
        };
        let in_scan = if ss == 0 { components } else { 1 };
        let mut sos = vec![in_scan];
        for c in 0..in_scan {
            sos.extend_from_slice(&[c + 1, 0x00]);
        }
        sos.extend_from_slice(&[ss, se, approximation]);
        segment(&mut jpeg, 0xDA, &sos);
        // Entropy-coded bytes, stuffed so that none reads as a marker.
        let length = usize::from(byte(&mut data)) * 4;
        for &b in take(&mut data, length) {
            jpeg.push(b);
            if b == 0xFF {
                jpeg.push(0);
            }
        }
    }
    jpeg.extend_from_slice(&[0xFF, 0xD9]);
    let limits = Limits { max_pixels: 1 << 20, ..Limits::default() };
    let quality = if flags & 32 == 0 { Quality::Level(85) } else { Quality::Source };
    let _ = convert(&jpeg, &Options { quality, limits, ..Options::default() });
});
