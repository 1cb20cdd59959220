#!/usr/bin/env bash
# The aarch64 assembly of the engine's hot kernels, and how many of each one's instructions are
# vector (NEON) instructions: the counts in docs/engine-speed.md's Graviton section.
#
# Usage: scripts/arm64-asm.sh [OUT_DIR]
# Emits the engine's release assembly for aarch64-unknown-linux-gnu (`cargo rustc --release --
# --emit asm`, Debian's rustc; scripts/arm64-env.sh installs it where missing), writes each kernel's
# function to OUT_DIR/<kernel>.s (default $HOME/.cache/cloudimg-target-aarch64/asm) and prints a
# table: kernel, function, instructions, vector instructions. A vector instruction is one with a
# NEON register operand (`v0.4s`, `q0`, `d0`, lanes such as `v0.s[1]`); the engine has no floating
# point, so `d` and `s` registers appear only as vector halves and lanes.
#
# The kernels are the functions that hold them after inlining: where a kernel is inlined into its
# caller (the inverse DCT into the plane builder's row loop), the row is the caller's.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/arm64-env.sh
source scripts/arm64-env.sh
out_dir="${1:-$arm_target_dir/asm}"

if ! why=$(arm_ensure_toolchain); then
    echo "arm64-asm: $why" >&2
    exit 1
fi

deps="$arm_target_dir/$arm_triple/release/deps"
# cargo re-emits only when the engine changed; the newest file is this source's either way.
arm_cargo rustc --release --quiet -p cloudimg-engine --lib -- --emit asm
asm=$(ls -t "$deps"/cloudimg_engine-*.s | head -1)
mkdir -p "$out_dir"

python3 - "$asm" "$out_dir" <<'PY'
import re, subprocess, sys

asm_path, out_dir = sys.argv[1], sys.argv[2]
lines = open(asm_path).read().splitlines()

# Functions: from their label to their `.Lfunc_end` label.
functions, current = {}, None
declared = {m.group(1) for l in lines if (m := re.match(r"\s*\.type\s+([^,]+),@function", l))}
for line in lines:
    label = re.match(r"^([^\s:]+):", line)
    if label and label.group(1) in declared:
        current = label.group(1)
        functions[current] = []
    elif current and line.startswith(".Lfunc_end"):
        current = None
    elif current:
        functions[current].append(line)

names = list(functions)
demangled = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True,
                           text=True, check=True).stdout.splitlines()
readable = {n: re.sub(r"::h[0-9a-f]{16}$", "", d) for n, d in zip(names, demangled)}

VECTOR = re.compile(r"\b(v\d+\.(\d*[bhsd]|[bhsd]\[\d+\])|[qd]\d+)\b|\{\s*v\d+")

def instructions(body):
    # Instruction lines: indented, not directives, not labels, not comments.
    out = []
    for l in body:
        t = l.strip()
        if l[:1] in "\t " and t and not t.startswith((".", "//", ";")) and not t.endswith(":"):
            out.append(t.split("//")[0].strip())
    return out

# (kernel, what it is, the demangled function names that hold it, first match wins)
KERNELS = [
    ("luma", "RGB(A) to luma, all three kernels (wide u32x8; one function, the stride a parameter)",
     [r"luma::portable::kernel$", r"luma::portable::rgb$", r"luma::rgb$"]),
    ("fdct", "forward DCT + quantization (the NEON twin)",
     [r"jpeg::fdct::neon$"]),
    ("requantize-mask", "requantization: surviving-coefficient mask (wide i16x16)",
     [r"jpeg::survive::portable$"]),
    ("requantize-encode", "requantization fused into the entropy coder (scalar by nature)",
     [r"encode_blocks_portable$", r"transcode::encode_blocks$"]),
    ("idct", "inverse DCT: the NEON twin and, for blocks beyond its exact range, the 64-bit reference, both inlined into the plane builder's row loop",
     [r"jpeg::idct::neon::transform$", r"jpeg::idct::idct_block$", r"PlaneBuilder as .*LumaSink>::row$"]),
]

print(f"{'kernel':22} {'instructions':>12} {'vector':>7}  function")
for key, what, patterns in KERNELS:
    found = None
    for p in patterns:
        hits = [n for n in names if re.search(p, readable[n])]
        if hits:
            found = hits[0]
            break
    if not found:
        print(f"{key:22} {'-':>12} {'-':>7}  (no function: inlined into its callers, or absent)")
        continue
    body = instructions(functions[found])
    vector = [i for i in body if VECTOR.search(i.split(None, 1)[1] if " " in i else "")]
    with open(f"{out_dir}/{key}.s", "w") as f:
        f.write(f"// {what}\n// {readable[found]}\n" + "\n".join(body) + "\n")
    print(f"{key:22} {len(body):>12} {len(vector):>7}  {readable[found]}")
print(f"\n(assembly per kernel in {out_dir}/; whole file {asm_path})")
PY
