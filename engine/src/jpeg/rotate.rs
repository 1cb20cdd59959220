//! Turning an image upright in the DCT domain: moving whole blocks and permuting and negating
//! their coefficients, exactly as `jpegtran -rotate/-flip/-transpose` does, with no pixel ever
//! decoded. Lossless where the blocks line up with the image's edges.

use super::tables::{NATURAL, QuantTable};
use crate::Orientation;

/// The block and coefficient moves that display an image of a given orientation upright.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Upright {
    /// Output rows come from source columns (orientations 5 to 8).
    transpose: bool,
    /// Source columns are read right to left.
    mirror_x: bool,
    /// Source rows are read bottom to top.
    mirror_y: bool,
    /// Per source zigzag position: the output zigzag position it goes to.
    to: [u8; 64],
    /// Bit j set: source coefficient j goes out negated.
    negate: u64,
}

impl Upright {
    /// The moves for `orientation` on a `width` x `height` image, or `None` when the image
    /// displays as stored or when a partial edge block would have to move to the inside (the
    /// output then carries the orientation tag instead).
    pub fn new(orientation: Orientation, width: u32, height: u32) -> Option<Upright> {
        let (transpose, mirror_x, mirror_y) = match orientation.value() {
            2 => (false, true, false),
            3 => (false, true, true),
            4 => (false, false, true),
            5 => (true, false, false),
            6 => (true, false, true),
            7 => (true, true, true),
            8 => (true, true, false),
            _ => return None,
        };
        if (mirror_x && !width.is_multiple_of(8)) || (mirror_y && !height.is_multiple_of(8)) {
            return None;
        }
        let mut zigzag_of = [0u8; 64];
        for (k, &natural) in NATURAL.iter().enumerate() {
            zigzag_of[usize::from(natural)] = k as u8;
        }
        let mut to = [0u8; 64];
        let mut negate = 0u64;
        for (k, &natural) in NATURAL.iter().enumerate() {
            // (u, v): vertical and horizontal frequency of the output coefficient.
            let (u, v) = (usize::from(natural) / 8, usize::from(natural) % 8);
            // Mirroring source columns negates the odd horizontal frequencies of the source,
            // mirroring rows the odd vertical ones; a transpose swaps which is which.
            let (source, odd) = if transpose {
                (
                    v * 8 + u,
                    (mirror_x && u % 2 == 1) ^ (mirror_y && v % 2 == 1),
                )
            } else {
                (
                    u * 8 + v,
                    (mirror_x && v % 2 == 1) ^ (mirror_y && u % 2 == 1),
                )
            };
            let j = zigzag_of[source];
            to[usize::from(j)] = k as u8;
            negate |= u64::from(odd) << j;
        }
        Some(Upright {
            transpose,
            mirror_x,
            mirror_y,
            to,
            negate,
        })
    }

    /// The output's width and height in the same units as the source's.
    pub fn output_size<T>(&self, width: T, height: T) -> (T, T) {
        if self.transpose {
            (height, width)
        } else {
            (width, height)
        }
    }

    /// The source table as the output's coefficients see it.
    pub fn table(&self, source: &QuantTable) -> QuantTable {
        let mut out = [0; 64];
        for (&k, &step) in self.to.iter().zip(source) {
            out[usize::from(k)] = step;
        }
        out
    }

    /// The output table as the source's coefficients see it (the inverse of [`Self::table`]).
    pub fn source_table(&self, output: &QuantTable) -> QuantTable {
        std::array::from_fn(|j| output[usize::from(self.to[j])])
    }

    /// The source block (column, row) that lands at output block (x, y) of a source grid of
    /// `blocks_w` x `blocks_h`.
    pub fn source_block(
        &self,
        x: usize,
        y: usize,
        blocks_w: usize,
        blocks_h: usize,
    ) -> (usize, usize) {
        let (sx, sy) = if self.transpose { (y, x) } else { (x, y) };
        let sx = if self.mirror_x { blocks_w - 1 - sx } else { sx };
        let sy = if self.mirror_y { blocks_h - 1 - sy } else { sy };
        (sx, sy)
    }

    /// Where source coefficient `j` of value `value` sits in the upright output: its zigzag
    /// position and value there.
    #[inline(always)]
    pub fn place(&self, j: usize, value: i16) -> (usize, i16) {
        let value = if self.negate >> j & 1 == 1 {
            -value
        } else {
            value
        };
        (usize::from(self.to[j]), value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jpeg::decoder::Block;
    use crate::jpeg::idct::idct_block;

    /// The block's coefficients as they sit in the upright output.
    fn turned(upright: &Upright, source: &Block) -> Block {
        let mut out = Block::ZERO;
        for (j, &value) in source.coef.iter().enumerate() {
            let (k, value) = upright.place(j, value);
            out.coef[k] = value;
        }
        out
    }

    /// A block whose every coefficient differs, with its pixels.
    fn sample() -> (Block, Vec<u8>) {
        let mut block = Block::ZERO;
        for (k, c) in block.coef.iter_mut().enumerate() {
            *c = ((k as i16 * 37) % 23) - 11;
        }
        block.coef[0] = 0;
        block.mask = u64::MAX;
        let mut pixels = vec![0u8; 64];
        idct_block(&block, &[4; 64], &mut pixels, 8);
        (block, pixels)
    }

    #[test]
    fn coefficient_moves_equal_pixel_moves_for_every_orientation() {
        let (block, pixels) = sample();
        for value in 2..=8u8 {
            let orientation = Orientation::new(value);
            let upright = Upright::new(orientation, 8, 8).expect("aligned");
            let mut moved = turned(&upright, &block);
            moved.mask = u64::MAX;
            let mut got = vec![0u8; 64];
            idct_block(&moved, &[4; 64], &mut got, 8);
            let (want, _, _) = orientation.apply(pixels.clone(), 8, 8, 1);
            // The integer IDCT rounds between its column and row passes, so a transposed block
            // may differ by one in a pixel; mirrors are exact.
            let tolerance = if value >= 5 { 1 } else { 0 };
            let worst = got
                .iter()
                .zip(&want)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(worst <= tolerance, "orientation {value}: off by {worst}");
        }
    }

    #[test]
    fn partial_edge_blocks_never_move_inside() {
        let o = Orientation::new;
        assert!(Upright::new(o(1), 16, 16).is_none());
        assert!(
            Upright::new(o(5), 13, 11).is_some(),
            "a transpose keeps edges at edges"
        );
        assert!(Upright::new(o(6), 13, 16).is_some());
        assert!(Upright::new(o(6), 16, 13).is_none());
        assert!(Upright::new(o(8), 13, 16).is_none());
        assert!(Upright::new(o(3), 16, 13).is_none());
    }

    #[test]
    fn block_positions_follow_the_orientation() {
        let upright = Upright::new(Orientation::new(6), 16, 24).unwrap();
        // Rotating 90 degrees clockwise: the output's top-left block is the source's bottom-left.
        assert_eq!(upright.source_block(0, 0, 2, 3), (0, 2));
        assert_eq!(upright.output_size(2, 3), (3, 2));
    }
}
