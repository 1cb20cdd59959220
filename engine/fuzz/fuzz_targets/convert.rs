//! The engine's entry point on arbitrary bytes, to both output formats: it may refuse them,
//! never panic or hang. Seeded with the corpus's real and broken images.
#![no_main]

use cloudimg_engine::{Limits, Options, OutputFormat, convert};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Small limits keep each run short; the limits themselves are tested elsewhere.
    let limits = Limits { max_pixels: 1 << 22, ..Limits::default() };
    for format in [OutputFormat::Jpeg, OutputFormat::Png] {
        let _ = convert(data, &Options { format, limits, ..Options::default() });
    }
});
