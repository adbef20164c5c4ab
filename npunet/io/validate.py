"""The single validation layer for images: whether an image can be segmented or scored, decided in one place.

Checked on the header alone, before any voxel is allocated (`parse_header`, `check_header`):
- a single-file NIfTI-1 or NIfTI-2 header (its size field and magic), with a data type that is real-valued
  (complex and RGB voxels are refused: dropping the imaginary part would be a silent wrong answer);
- 3D (trailing axes of size 1 are accepted), no axis of size 0 or less;
- voxel sizes pixdim[1..3] finite and > 0 (nibabel would put 1 mm in place of a 0, and abs() of a negative,
  and say so only on stderr);
- known qform/sform codes; where the qform gives the orientation, a valid quaternion and qfac;
- a usable scaling (scl_slope / scl_inter) and data offset;
- the data the header declares must fit in the file (uncompressed: the file is long enough; gzip: no more
  than deflate's largest expansion, 1032:1, of the file) and in the memory available (npunet.resources).
Checked on the image:
- `check_orientation`: the orientation is known (qform or sform code > 0), or the user says how the axes run
  (--assume-orientation RAS); without either, left and right cannot be told apart: refused;
- `check_affine`: finite and invertible; `check_voxels`: every voxel value finite.
Warned about (`image_warnings`, one line each): intensities that do not look like Hounsfield units; qform
and sform that disagree on the axis directions (the sform is used, as the standard says); voxel sizes
outside 0.05..50 mm; an --assume-orientation that a header with its own orientation makes moot.
Compared (`check_same_grid`): two images on one grid (shape, voxel size, axis directions, origin).

Every refusal is an InputError of one line naming the file and the numbers.
"""

from __future__ import annotations

import math
import struct

import nibabel as nib
import numpy as np

from npunet.errors import InputError
from npunet.preprocess import voxel_sizes
from npunet.resources import check_memory, format_bytes

DEFLATE_MAX_RATIO = 1032          # the most one byte of deflate stream can expand to (zlib's technical notes)
REAL_DTYPE_CODES = {2, 4, 8, 16, 64, 256, 512, 768, 1024, 1280, 1536}   # (u)int8..64, float32/64/128
HEADER_SIZES = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
SINGLE_FILE_OFFSET = {nib.Nifti1Header: 352, nib.Nifti2Header: 544}   # header + 4 extension bytes
PLAUSIBLE_VOXEL_MM = (0.05, 50.0)


# -------------------------------------------------------------------------------------------- header --

def parse_header(head: bytes, name: str):
    """The NIfTI-1/2 header at the start of `head` (decompressed bytes), read without nibabel's fix-ups."""
    for size, klass in HEADER_SIZES.items():
        for endian in "<>":
            if len(head) >= 4 and struct.unpack(endian + "i", head[:4])[0] == size:
                if len(head) < size:
                    raise InputError(f"{name}: truncated: the file ends inside its {size}-byte NIfTI header")
                hdr = klass(head[:size], endianness=endian, check=False)
                magic = bytes(hdr["magic"][()])
                if magic not in (b"n+1", b"n+2"):
                    raise InputError(f"{name}: not a single-file NIfTI image (magic {magic!r}; a .hdr/.img pair "
                                     f"or an Analyze image?); convert it to .nii.gz")
                return hdr
    raise InputError(f"{name}: not a readable NIfTI image (the first bytes are {head[:8]!r}, not a NIfTI-1 or "
                     f"NIfTI-2 header)")


def header_shape(hdr, name: str) -> tuple[int, ...]:
    """The shape the header declares, checked: 1..7 axes, none of size 0 or less."""
    dim = [int(d) for d in hdr["dim"]]
    if not 1 <= dim[0] <= 7:
        raise InputError(f"{name}: corrupt header: dim[0] = {dim[0]} axes (must be 1..7)")
    shape = tuple(dim[1:dim[0] + 1])
    if any(s <= 0 for s in shape):
        raise InputError(f"{name}: empty image, shape {shape} has an axis of size 0 or less")
    return shape


def check_dims(shape: tuple, name: str) -> tuple[int, int, int]:
    """The 3D shape of an image of `shape`: refuses 1D/2D and several volumes; trailing 1s are dropped."""
    if len(shape) < 3:
        raise InputError(f"{name}: a {len(shape)}D image of shape {shape}; need a 3D volume")
    if any(s == 0 for s in shape):
        raise InputError(f"{name}: empty image, shape {shape} has an axis of size 0")
    if len(shape) > 3 and any(s != 1 for s in shape[3:]):
        raise InputError(f"{name}: a {len(shape)}D image of shape {shape} holds several volumes; "
                         f"need one 3D volume (split it first)")
    return tuple(int(s) for s in shape[:3])


def check_header(hdr, name: str, *, file_bytes: int | None = None, gzip_bytes: int | None = None) -> int:
    """Everything about the header that can be checked before reading the voxels (see the module doc).

    file_bytes: the length of the uncompressed file (None when gzipped); gzip_bytes: the length of the
    gzip file. Returns the number of bytes the data ends at (data offset + voxel bytes), which the caller
    then reads or decompresses, and no more. Raises InputError, or ResourceError when it would not fit in
    memory."""
    shape = check_dims(header_shape(hdr, name), name)
    dtype = check_header_fields(hdr, name)
    single = SINGLE_FILE_OFFSET[type(hdr)]
    offset = float(hdr["vox_offset"])
    if not math.isfinite(offset) or (offset != 0 and offset < single) or offset > 2**40:
        raise InputError(f"{name}: corrupt header: data offset vox_offset = {offset:g} (must be >= {single})")
    offset = int(offset) or single
    nvox = math.prod(shape)
    end = offset + nvox * dtype.itemsize
    held = end
    if file_bytes is not None and file_bytes < end:
        raise InputError(f"{name}: truncated: the header declares {_shape(shape)} {dtype} voxels "
                         f"({format_bytes(end - offset)}) from byte {offset}, the file has {file_bytes:,} bytes")
    if gzip_bytes is not None:
        if end > DEFLATE_MAX_RATIO * gzip_bytes + 4096:
            raise InputError(f"{name}: truncated or corrupt: the header declares {_shape(shape)} {dtype} voxels "
                             f"({format_bytes(end)}), more than {gzip_bytes:,} gzip bytes can hold")
        held += gzip_bytes
    # the decompressed (or read) bytes, nibabel's copy of the voxels, and the float32 volume
    check_memory(held + (end - offset) + 4 * nvox,
                 f"{name} ({_shape(shape)} {dtype} voxels)", "the image is too large for this machine")
    return end


def check_header_fields(hdr, name: str) -> np.dtype:
    """The header checks that do not depend on the file (also for images built in memory): a real voxel
    type, voxel sizes finite and > 0, valid qform/sform, a usable scaling. Returns the voxel dtype."""
    code = int(hdr["datatype"])
    if code not in REAL_DTYPE_CODES:
        kind = {32: "complex64", 1792: "complex128", 2048: "complex256", 128: "RGB", 2304: "RGBA",
                1: "1-bit"}.get(code)
        if kind:
            fix = "take the magnitude or the real part first" if "complex" in kind else "convert it to grey levels"
            raise InputError(f"{name}: {kind} voxels; npunet needs one real value per voxel ({fix})")
        raise InputError(f"{name}: corrupt header: data type code {code} is not a NIfTI voxel type")
    pixdim = np.asarray(hdr["pixdim"], dtype=np.float64)
    zooms = pixdim[1:4]
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise InputError(f"{name}: voxel sizes pixdim[1:4] = {_fmt(zooms)} must be finite and > 0 (nibabel would "
                         f"assume 1 mm for 0, and drop a minus sign); fix the header")
    _check_xform(hdr, pixdim, name)
    _check_scaling(hdr, name)
    return hdr.get_data_dtype()


def _check_xform(hdr, pixdim: np.ndarray, name: str) -> None:
    valid = set(nib.nifti1.xform_codes.value_set())
    q, s = int(hdr["qform_code"]), int(hdr["sform_code"])
    for field, code in (("qform_code", q), ("sform_code", s)):
        if code not in valid:
            raise InputError(f"{name}: corrupt header: {field} = {code} is not a NIfTI code (0..5)")
    if s > 0:
        srow = np.array([hdr["srow_x"], hdr["srow_y"], hdr["srow_z"]], dtype=np.float64)
        if not np.all(np.isfinite(srow)):
            raise InputError(f"{name}: the sform (srow_x/y/z) holds NaN or Inf values")
    if q > 0:            # checked even behind an sform: other programs may read the qform
        bcd = np.array([hdr["quatern_b"], hdr["quatern_c"], hdr["quatern_d"]], dtype=np.float64)
        qoff = np.array([hdr["qoffset_x"], hdr["qoffset_y"], hdr["qoffset_z"]], dtype=np.float64)
        if not np.all(np.isfinite(bcd)) or not np.all(np.isfinite(qoff)) or float(bcd @ bcd) > 1 + 1e-6:
            raise InputError(f"{name}: the qform is invalid (quaternion b, c, d = {_fmt(bcd)}, offsets "
                             f"{_fmt(qoff)}); its orientation cannot be trusted")
        if s == 0 and pixdim[0] not in (-1.0, 0.0, 1.0):
            raise InputError(f"{name}: pixdim[0] (qfac) = {pixdim[0]:g}, must be 1 or -1; readers disagree on "
                             f"what it means for the slice direction")


def _check_scaling(hdr, name: str) -> None:
    slope, inter = float(hdr["scl_slope"]), float(hdr["scl_inter"])
    if math.isfinite(slope) and slope != 0 and not math.isfinite(inter):
        raise InputError(f"{name}: corrupt header: scl_slope {slope:g} with scl_inter {inter:g}")


def _fmt(values) -> str:
    return "[" + ", ".join(f"{v:.4g}" for v in np.asarray(values, dtype=np.float64).ravel()) + "]"


def _shape(shape) -> str:
    return "x".join(str(s) for s in shape)


# ---------------------------------------------------------------------------------------- orientation --

def orientation_known(header) -> bool:
    return int(header["qform_code"]) > 0 or int(header["sform_code"]) > 0


def parse_axcodes(text: str) -> str:
    """'ras' -> 'RAS'; ValueError unless three letters, one of R/L, one of A/P and one of S/I."""
    codes = str(text).strip().upper()
    axes = sorted("RLAPSI".index(c) // 2 if c in "RLAPSI" else -1 for c in codes)
    if len(codes) != 3 or axes != [0, 1, 2]:
        raise ValueError(f"{text!r} is not an orientation: give three axis codes, one of R/L, one of A/P and "
                         f"one of S/I, in the order of the voxel axes (e.g. RAS, LPS, LAS)")
    return codes


def check_orientation(header, name: str, assume: str | None = None) -> None:
    """Refuse an image whose header gives no orientation (qform_code = sform_code = 0) unless `assume`
    (axis codes such as 'RAS') says how its voxel axes run; refuse an `assume` that is not axis codes."""
    if assume is not None:
        try:
            parse_axcodes(assume)
        except ValueError as exc:
            raise InputError(f"assume_orientation: {exc}") from None
    if not orientation_known(header) and assume is None:
        raise InputError(f"{name}: the header gives no orientation (qform_code and sform_code are both 0), so "
                         f"left and right cannot be told apart; if you know how the voxel axes run, pass "
                         f"--assume-orientation with their axis codes (e.g. RAS or LPS; assume_orientation= in "
                         f"Python), or fix the header")


def assumed_affine(zooms, axcodes: str) -> np.ndarray:
    """The affine of voxel axes running along `axcodes` ('LPS': i to the left, j to posterior, k to superior)
    with the given voxel sizes, origin at voxel 0."""
    axcodes = parse_axcodes(axcodes)
    affine = np.eye(4)
    affine[:3, :3] = 0
    for i, (code, zoom) in enumerate(zip(axcodes, zooms)):
        world = "RLAPSI".index(code)
        affine[world // 2, i] = (1.0 if world % 2 == 0 else -1.0) * float(zoom)
    return affine


def orientation_affine(img, assume: str | None = None) -> np.ndarray:
    """The affine that tells the pipeline how the image lies: the header's own (qform/sform), or, when it has
    none, the one `assume` describes. The image and its header are left as they are (the output keeps them)."""
    header = getattr(img, "header", None)
    if header is None or "qform_code" not in header or orientation_known(header):
        return np.asarray(img.affine, dtype=np.float64)
    if assume is None:
        raise InputError("the image has no orientation; pass assume_orientation (e.g. 'RAS')")
    return assumed_affine(img.header.get_zooms()[:3], assume)


def check_affine(affine, name: str) -> None:
    affine = np.asarray(affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InputError(f"{name}: the affine is not invertible or not finite: "
                         f"{np.array2string(affine[:3], precision=3, separator=',').replace(chr(10), '')}")


def check_voxels(data: np.ndarray, name: str) -> None:
    finite = np.isfinite(data)
    if not finite.all():
        n_nan = int(np.count_nonzero(np.isnan(data)))
        n_inf = int(data.size - np.count_nonzero(finite) - n_nan)
        raise InputError(f"{name}: {n_nan} NaN and {n_inf} Inf voxels (of {data.size}; values beyond float32's "
                         f"range count as Inf); replace them (e.g. with -1024) before segmenting")


# ------------------------------------------------------------------------------------------- warnings --

def hu_range_warning(data: np.ndarray) -> str | None:
    """A one-line warning when the intensities do not look like Hounsfield units, else None.

    A CT of the abdomen in HU contains air (about -1000, outside the body or in the bowel), fat (-100) and
    bone or contrast (+200 and up); stored values are bounded by the scanner range (-1024 .. 3071, up to
    about 30000 for extended-range metal). The rules, checked in order:
      - max - min < 1 or (min >= -1 and max <= 1): intensities normalised to [0, 1] or [-1, 1], or constant;
      - max < 100: no bone or contrast at all, so not HU (or a window already applied);
      - min >= 0: nothing below water, no fat or air: likely raw stored values without the rescale
        intercept (typically -1024);
      - min < -10000 or max > 40000: outside any scanner's HU range.
    """
    data = np.asarray(data)
    lo, hi = float(np.min(data)), float(np.max(data))
    seen = f"intensities range from {lo:.4g} to {hi:.4g}"
    why = None
    if hi - lo < 1 or (lo >= -1 and hi <= 1):
        why = "they look normalised or constant"
    elif hi < 100:
        why = "nothing above 100 HU (no bone or contrast)"
    elif lo >= 0:
        why = "nothing below 0 HU (no fat or air): a missing rescale intercept of -1024?"
    elif lo < -10000 or hi > 40000:
        why = "beyond any CT scanner's HU range"
    if why is None:
        return None
    return f"{seen}: {why}; the network expects Hounsfield units (it clips to [-160, 300])"


def image_warnings(img, data: np.ndarray | None = None, assume: str | None = None) -> list[str]:
    """One-line warnings about an image that is segmented anyway (see the module doc)."""
    out = []
    header = getattr(img, "header", None)
    nifti = header is not None and "qform_code" in header
    if nifti and orientation_known(header):
        codes = "".join(nib.aff2axcodes(img.affine))
        if assume is not None and parse_axcodes(assume) != codes:
            out.append(f"the header gives the orientation {codes}; --assume-orientation {parse_axcodes(assume)} "
                       f"is not used")
        q, s = header.get_qform(coded=True), header.get_sform(coded=True)
        if q[1] and s[1] and nib.aff2axcodes(q[0]) != nib.aff2axcodes(s[0]):
            out.append(f"the qform ({''.join(nib.aff2axcodes(q[0]))}) and the sform "
                       f"({''.join(nib.aff2axcodes(s[0]))}) disagree on the axis directions; the sform is used, "
                       f"as the NIfTI standard says (other programs may show the image mirrored)")
    elif nifti and assume is not None:
        out.append(f"no orientation in the header: assuming {parse_axcodes(assume)} (--assume-orientation)")
    zooms = voxel_sizes(orientation_affine(img, assume) if nifti else img.affine)
    lo, hi = PLAUSIBLE_VOXEL_MM
    if np.any(zooms < lo) or np.any(zooms > hi):
        out.append(f"voxel size {' x '.join(f'{z:.4g}' for z in zooms)} mm is unusual for a CT "
                   f"({lo:g} to {hi:g} mm expected); check the header's units")
    if data is not None:
        message = hu_range_warning(data)
        if message:
            out.append(message)
    return out


# ------------------------------------------------------------------------------------------ same grid --

def check_same_grid(a, b, name_a: str, name_b: str) -> None:
    """Refuse two images that are not on one voxel grid: another shape, voxel size, axis direction (a
    mirrored axis) or origin, or one with an orientation and one without. Tolerances: 1e-3 relative on voxel
    sizes, 1e-3 on direction cosines, 5 % of the smallest voxel on the origin (headers store float32)."""
    sa, sb = tuple(a.shape[:3]), tuple(b.shape[:3])
    if sa != sb:
        raise InputError(f"{name_a} has shape {sa}, {name_b} has shape {sb}: not the same grid")
    ka, kb = orientation_known(a.header), orientation_known(b.header)
    if ka != kb:
        which, other = (name_a, name_b) if not ka else (name_b, name_a)
        raise InputError(f"{which} has no orientation in its header (qform/sform codes 0), {other} has one: "
                         f"they cannot be compared voxel by voxel")
    A, B = np.asarray(a.affine, dtype=np.float64), np.asarray(b.affine, dtype=np.float64)
    za, zb = np.linalg.norm(A[:3, :3], axis=0), np.linalg.norm(B[:3, :3], axis=0)
    if not np.allclose(za, zb, rtol=1e-3, atol=0):
        raise InputError(f"{name_a} has voxels of {_mm(za)} mm, {name_b} of {_mm(zb)} mm: not the same grid")
    da, db = A[:3, :3] / za, B[:3, :3] / zb
    for axis in range(3):
        if not np.allclose(da[:, axis], db[:, axis], atol=1e-3):
            ca, cb = nib.aff2axcodes(A)[axis], nib.aff2axcodes(B)[axis]
            how = "mirrored" if np.allclose(da[:, axis], -db[:, axis], atol=1e-3) else "turned"
            raise InputError(f"array axis {axis} runs {ca} in {name_a} and {cb} in {name_b} ({how}): "
                             f"not the same grid")
    shift = float(np.linalg.norm(A[:3, 3] - B[:3, 3]))
    if shift > 0.05 * float(min(za.min(), zb.min())):
        raise InputError(f"the origins of {name_a} and {name_b} are {shift:.3g} mm apart: not the same grid")


def _mm(z) -> str:
    return " x ".join(f"{v:.4g}" for v in z)
