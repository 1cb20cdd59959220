"""The formats conformance test's oracle: what the old system (Pillow) shows for each file.

For every path given on stdin (one a line), writes OUT/<n>.raw, the 8-bit BT.601 luma of the
image as Pillow 13 shows it (first frame, EXIF orientation applied with `exif_transpose`, alpha
composited over white; a HEIF's 16-bit gray scaled to 8 bits where Pillow would clip it), and
prints one JSON line: the index, the reference's size, and the PSNR
of Pillow's own path (`Image.open(f).convert("L").save(out, quality=Q)`) against that reference.
A file Pillow cannot open prints `{"n": n, "error": "..."}`. Our decoder never takes part.

Usage: python3 pillow_ref.py OUT QUALITY < paths
"""

import io
import json
import math
import sys

import PIL
import pillow_heif
from PIL import Image, ImageChops, ImageOps

pillow_heif.register_heif_opener()


def reference(im):
    """BT.601 luma of `im` composited over white, as displayed."""
    heif = im.format == "HEIF"
    im = ImageOps.exif_transpose(im)
    if heif and im.mode.startswith("I;16"):
        # pillow-heif hands 10- and 12-bit gray over as 16-bit; Pillow's own conversion to 8 bits
        # clips it (nearly everything turns white, in the old system too). The reference is the
        # honest image: 16 bits scaled to 8. (A 16-bit gray TIFF keeps Pillow's clipping, which
        # the engine follows: docs/formats.md.)
        im = im.convert("I").point(lambda v: v / 257 + 0.5).convert("L")
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB").convert("L")


def psnr(a, b):
    hist = ImageChops.difference(a, b).histogram()
    sse = sum(count * i * i for i, count in enumerate(hist))
    if sse == 0:
        return math.inf
    return 10 * math.log10(255 * 255 * a.width * a.height / sse)


def main():
    out, quality = sys.argv[1], int(sys.argv[2])
    if PIL.__version__ != "13.0.0":
        sys.exit(f"pillow_ref.py needs Pillow 13.0.0 (pinned), found {PIL.__version__}")
    for n, line in enumerate(sys.stdin):
        path = line.rstrip("\n")
        try:
            with Image.open(path) as im:
                ref = reference(im)
            with Image.open(path) as im:
                buf = io.BytesIO()
                im.convert("L").save(buf, "JPEG", quality=quality)
            pillow = ImageOps.exif_transpose(Image.open(io.BytesIO(buf.getvalue())))
            # Pillow's own path does not turn the image upright (its JPEG carries no tag):
            # compare it as it displays, which for a rotated source is not at all.
            pillow_psnr = psnr(pillow, ref) if pillow.size == ref.size else 0.0
        except Exception as e:  # noqa: BLE001 - any failure is reported, not raised
            print(json.dumps({"n": n, "error": f"{type(e).__name__}: {e}"}), flush=True)
            continue
        with open(f"{out}/{n}.raw", "wb") as f:
            f.write(ref.tobytes())
        print(
            json.dumps(
                {
                    "n": n,
                    "width": ref.width,
                    "height": ref.height,
                    "pillow_psnr": pillow_psnr if math.isfinite(pillow_psnr) else 999.0,
                }
            ),
            flush=True,
        )


main()
