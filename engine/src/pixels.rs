//! The pixel path's common ground: a decoded luma plane, turned upright, and its PNG encoder.

use crate::error::{Error, Result};
use crate::{Format, Orientation, luma};
use zune_core::bit_depth::BitDepth;
use zune_core::colorspace::ColorSpace;
use zune_core::options::EncoderOptions;

/// How a decoder's 8-bit samples are interleaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    Gray,
    GrayAlpha,
    Rgb,
    Rgba,
}

impl Layout {
    pub fn channels(self) -> usize {
        match self {
            Layout::Gray => 1,
            Layout::GrayAlpha => 2,
            Layout::Rgb => 3,
            Layout::Rgba => 4,
        }
    }
}

/// A palette reduced to what the pixel path needs of each entry: its luma as stored, its luma
/// over white, its alpha. Palette formats (GIF, BMP, TIFF) map indices through it straight to
/// planes, never building RGB.
pub(crate) struct GrayPalette {
    luma: [u8; 256],
    over_white: [u8; 256],
    alpha: [u8; 256],
    /// Whether any entry is not opaque.
    pub has_alpha: bool,
}

impl GrayPalette {
    /// From RGBA entries; indices past the end map to `fill`.
    pub fn new(entries: impl IntoIterator<Item = [u8; 4]>, fill: [u8; 4]) -> GrayPalette {
        let mut palette = GrayPalette {
            luma: [0; 256],
            over_white: [0; 256],
            alpha: [255; 256],
            has_alpha: false,
        };
        let mut entries = entries.into_iter();
        for i in 0..256 {
            let [r, g, b, a] = entries.next().unwrap_or(fill);
            let y = luma::luma(r, g, b);
            palette.luma[i] = y;
            palette.over_white[i] = luma::over_white(y, a);
            palette.alpha[i] = a;
            palette.has_alpha |= a != 255;
        }
        palette
    }

    /// The planes of `width * height` indices: luma and alpha, or luma over white when
    /// `flatten_alpha` (or when no entry is transparent).
    pub fn planes(
        &self,
        indices: &[u8],
        width: usize,
        height: usize,
        flatten_alpha: bool,
    ) -> GrayImage {
        let keep_alpha = self.has_alpha && !flatten_alpha;
        let table = if keep_alpha {
            &self.luma
        } else {
            &self.over_white
        };
        GrayImage {
            width,
            height,
            luma: indices.iter().map(|&i| table[usize::from(i)]).collect(),
            alpha: keep_alpha.then(|| {
                indices
                    .iter()
                    .map(|&i| self.alpha[usize::from(i)])
                    .collect()
            }),
        }
    }
}

/// Builds the planes row by row from a decoder that gives packed RGB or RGBA rows, so the
/// samples of the whole image never exist at once.
pub(crate) struct PlaneWriter {
    image: GrayImage,
    layout: Layout,
    flatten_alpha: bool,
}

impl PlaneWriter {
    pub fn new(width: usize, height: usize, layout: Layout, flatten_alpha: bool) -> PlaneWriter {
        let keep_alpha = matches!(layout, Layout::Rgba | Layout::GrayAlpha) && !flatten_alpha;
        PlaneWriter {
            image: GrayImage {
                width,
                height,
                luma: vec![0; width * height],
                alpha: keep_alpha.then(|| vec![0; width * height]),
            },
            layout,
            flatten_alpha,
        }
    }

    /// Output row `y` from `width` packed pixels of the writer's layout.
    pub fn row(&mut self, y: usize, samples: &[u8]) {
        self.span(y, 0, samples);
    }

    /// Part of output row `y`, from column `x` on, from packed pixels of the writer's layout
    /// (a format stored in tiles fills each row a tile's width at a time).
    pub fn span(&mut self, y: usize, x: usize, samples: &[u8]) {
        let start = y * self.image.width + x;
        let end = start + samples.len() / self.layout.channels();
        let out = &mut self.image.luma[start..end];
        match (self.layout, &mut self.image.alpha) {
            (Layout::Rgba, Some(alpha)) => {
                luma::rgba(samples, out);
                for (a, px) in alpha[start..end].iter_mut().zip(samples.chunks_exact(4)) {
                    *a = px[3];
                }
            }
            (Layout::Rgba, None) if self.flatten_alpha => luma::rgba_over_white(samples, out),
            (Layout::Rgba, None) => luma::rgba(samples, out),
            (Layout::Rgb, _) => luma::rgb(samples, out),
            (Layout::Gray, _) => out.copy_from_slice(samples),
            (Layout::GrayAlpha, Some(alpha)) => {
                let alpha = &mut alpha[start..end];
                for ((y, a), pair) in out.iter_mut().zip(alpha).zip(samples.chunks_exact(2)) {
                    (*y, *a) = (pair[0], pair[1]);
                }
            }
            (Layout::GrayAlpha, None) => {
                for (y, pair) in out.iter_mut().zip(samples.chunks_exact(2)) {
                    *y = luma::over_white(pair[0], pair[1]);
                }
            }
        }
    }

    pub fn finish(self) -> GrayImage {
        self.image
    }
}

/// A decoded image reduced to 8-bit luma, with alpha kept separately where the output keeps it.
pub(crate) struct GrayImage {
    pub width: usize,
    pub height: usize,
    pub luma: Vec<u8>,
    pub alpha: Option<Vec<u8>>,
}

impl GrayImage {
    pub fn new(width: usize, height: usize) -> Self {
        GrayImage {
            width,
            height,
            luma: vec![0; width * height],
            alpha: None,
        }
    }

    /// Reduces decoded 8-bit samples to luma, keeping alpha as a plane or compositing it over
    /// white (`flatten_alpha`, for JPEG output). Checks that the decoder gave exactly
    /// `width * height` pixels. Gray samples become the luma plane without a copy.
    pub fn from_samples(
        format: Format,
        samples: Vec<u8>,
        layout: Layout,
        width: usize,
        height: usize,
        flatten_alpha: bool,
    ) -> Result<GrayImage> {
        let channels = layout.channels();
        let expected = width * height * channels;
        if samples.len() != expected {
            return Err(Error::invalid(
                format,
                format!(
                    "expected {expected} samples for {width}x{height}x{channels}, decoded {}",
                    samples.len()
                ),
            ));
        }
        // Each plane is allocated as it is filled: never a zeroed one that is then replaced.
        let plane = |f: &dyn Fn(&[u8], &mut [u8])| {
            let mut out = vec![0; width * height];
            f(&samples, &mut out);
            out
        };
        let (luma, alpha) = match layout {
            Layout::Gray => (samples, None),
            Layout::GrayAlpha => {
                let pairs = samples.chunks_exact(2);
                if flatten_alpha {
                    (pairs.map(|p| luma::over_white(p[0], p[1])).collect(), None)
                } else {
                    (
                        pairs.clone().map(|p| p[0]).collect(),
                        Some(pairs.map(|p| p[1]).collect()),
                    )
                }
            }
            Layout::Rgb => (plane(&luma::rgb), None),
            Layout::Rgba if flatten_alpha => (plane(&luma::rgba_over_white), None),
            Layout::Rgba => (
                plane(&luma::rgba),
                Some(samples.chunks_exact(4).map(|p| p[3]).collect()),
            ),
        };
        Ok(GrayImage {
            width,
            height,
            luma,
            alpha,
        })
    }

    /// The image as it displays: pixels moved by `orientation`, so the output needs no tag.
    pub fn upright(self, orientation: Orientation) -> GrayImage {
        let (luma, width, height) = orientation.apply(self.luma, self.width, self.height, 1);
        let alpha = self
            .alpha
            .map(|alpha| orientation.apply(alpha, self.width, self.height, 1).0);
        GrayImage {
            width,
            height,
            luma,
            alpha,
        }
    }

    /// A gray (or gray+alpha) 8-bit PNG.
    pub fn encode_png(&self) -> Result<Vec<u8>> {
        let (interleaved, colorspace);
        let pixels = match &self.alpha {
            None => {
                colorspace = ColorSpace::Luma;
                &self.luma
            }
            Some(alpha) => {
                colorspace = ColorSpace::LumaA;
                // Sized up front: collecting a `flat_map` would double its way there.
                let mut pairs = Vec::with_capacity(2 * self.luma.len());
                pairs.extend(self.luma.iter().zip(alpha).flat_map(|(&y, &a)| [y, a]));
                interleaved = pairs;
                &interleaved
            }
        };
        let options = EncoderOptions::new(self.width, self.height, colorspace, BitDepth::Eight);
        let mut out = Vec::with_capacity(pixels.len() / 2 + 1024);
        zune_png::PngEncoder::new(pixels, options)
            .encode(&mut out)
            .map_err(|e| Error::Internal(format!("PNG encoder: {e:?}")))?;
        Ok(out)
    }
}
