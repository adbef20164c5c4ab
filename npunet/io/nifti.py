"""Reading a CT volume from NIfTI and writing a label map back onto the input's exact grid.

What this file promises:
- `read_ct` either returns a 3D image whose data is already in memory as float32 (so a truncated file fails
  here, not halfway through the network), or raises InputError with one line naming the file and the problem;
  it never allocates more than the header declares, and checks that against the file and the free memory.
- `write_labels` writes a uint8 label map with the input's shape, affine, qform/sform (matrices and codes),
  zooms and units; it writes to a temporary name in the output folder and publishes it (npunet.publish), so
  a crash never leaves a half-written file under the final name. A `CASE.labels.json` sidecar ({"0":
  "background", ...}) is written beside `CASE.nii.gz` the same way.
- `write_organ_masks` writes one uint8 0/1 mask per organ (`liver.nii.gz`, ...) on the same grid, into a
  folder that npunet.publish.staged_folder builds under a temporary name beside its final one and
  publishes whole, so a folder of masks is either complete or absent.
- Every check of what can be read lives in npunet.io.validate; this file reads and writes, and checks output
  paths before any work (check_output_path, check_output_folder).
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from npunet.errors import InputError
from npunet.io.digests import INPUT_FILES
from npunet.io.validate import (check_affine, check_dims, check_header, check_header_fields, check_orientation,
                                check_voxels, parse_header)
from npunet.io.validate import hu_range_warning  # noqa: F401  (re-exported: npunet.io, older callers)
from npunet.io.paths import check_output_file, make_parent
from npunet.io.paths import check_output_folder as _check_output_folder
from npunet.publish import atomic_write, unpublish
from npunet.resources import check_memory
from npunet.text import one_line
from npunet.third_party import captured

NIFTI_SUFFIXES = (".nii.gz", ".nii")
NIFTI_INTENT_LABEL = "label"  # NIfTI intent code 1002: voxel values are label indices


# --------------------------------------------------------------------------------------------- names --

def is_nifti_name(path: str | os.PathLike) -> bool:
    """True for names ending in .nii or .nii.gz (case-insensitive)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def strip_nifti_suffix(name: str) -> str:
    """`case_0000.nii.gz` -> `case_0000`; names without a NIfTI suffix come back unchanged."""
    low = name.lower()
    for suffix in NIFTI_SUFFIXES:
        if low.endswith(suffix):
            return name[: -len(suffix)]
    return name


def sidecar_path(output: str | os.PathLike, suffix: str) -> Path:
    """A file beside a label map: (`out/CASE.nii.gz`, `.labels.json`) -> `out/CASE.labels.json`."""
    output = Path(output)
    return output.with_name(strip_nifti_suffix(output.name) + suffix)


def labels_json_path(output: str | os.PathLike) -> Path:
    """`CASE.nii.gz` -> `CASE.labels.json`, the label-name sidecar."""
    return sidecar_path(output, ".labels.json")


# ------------------------------------------------------------------------------------------- reading --

GZIP_CHUNK = 16 * 2**20

try:                             # the optional extra `pip install 'npunet[fast]'`: ISA-L's inflate, the same
    from isal import isal_zlib as FAST_INFLATE   # bytes out about twice as fast as zlib's (0.20 s against 0.42 s
except ImportError:              # for a 512x512x100 CT, Intel Xeon family 6 model 167); without it, zlib
    FAST_INFLATE = None
INFLATE = FAST_INFLATE or zlib   # what _gunzip uses


def regular_file(path: Path) -> int:
    """The size of `path`, or a one-line InputError: missing, a folder, or not a regular file (reading a
    FIFO or a device would block or never end)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        raise InputError(f"{path}: no such file" + (" (a broken link)" if path.is_symlink() else "")) from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({one_line(exc)})") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a folder, not a NIfTI file")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: not a regular file (a pipe, a socket or a device); give a NIfTI file")
    return st.st_size


def open_image(path: str | os.PathLike, float32: bool = False):
    """The single-file NIfTI-1/2 image in `path`, its voxels in memory (as stored, not yet converted).

    The header is read and checked first (npunet.io.validate.check_header: data type, dimensions, voxel
    sizes, codes, and the declared size against the file and the available memory), and then only the bytes
    the header declares are read or decompressed: a header claiming more than the file holds, or a gzip
    bomb, costs nothing. A gzipped file (told by its first bytes, whatever its name) is decompressed in
    memory, in large zlib calls that let other threads run, while another thread takes the file's SHA-256.
    nibabel's own messages are captured and folded into the error. Raises InputError (or ResourceError) with one
    line naming the file.

    float32=True: returns (image, voxels) instead, voxels being what image.get_fdata(dtype=np.float32) gives
    (VoxelsAsFloat32); for a gzipped file they are converted piece by piece on a third thread while the rest
    inflates, and the image holds only the header (its data is never read from it)."""
    path = Path(path)
    size = regular_file(path)
    try:
        with open(path, "rb") as f:
            start = f.read(64 * 1024)
            gz = start[:2] == b"\x1f\x8b"
            head = _gunzip(start, limit=560, name=path) if gz else start
            hdr = parse_header(head, str(path))
            end = check_header(hdr, str(path), file_bytes=None if gz else size, gzip_bytes=size if gz else None)
            f.seek(0)
            blob = f.read() if gz else f.read(end)
            digest = hashlib.sha256()         # the bytes decoded, and the rest of the file (what sha256sum
            size = len(blob)                  # prints): what a report vouches for
            if not gz:
                digest.update(blob)
            for block in iter(lambda: f.read(1 << 20), b""):     # (a gzipped file was read whole)
                digest.update(block)
                size += len(block)
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({one_line(exc, path)})") from None
    voxels = None
    if gz:      # hashed on the other core while it inflates (both release the GIL): 0.06-0.13 s of 72 MB saved
                # (a 512x512x300 CT, Intel Xeon family 6 model 167)
        hashing = threading.Thread(target=digest.update, args=(blob,), name="npunet-input-sha256")
        hashing.start()
        voxels = VoxelsAsFloat32(hdr) if float32 else None
        try:
            raw = _gunzip(blob, limit=end, name=path, whole=True, sink=voxels and voxels.take)
            if voxels is not None:
                raw = voxels.finish()         # the header's bytes; a conversion's error is raised here
        finally:
            hashing.join()
            if voxels is not None:
                voxels.close()
        decompressed = voxels.received if voxels is not None else len(raw)
    else:
        raw = blob
        decompressed = len(raw)
    digest = {"name": path.name, "size": size, "sha256": digest.hexdigest()}
    del blob
    if decompressed < end:
        raise InputError(f"{path}: truncated or corrupt image data: the header declares {end:,} bytes of header "
                         f"and voxels, the {'decompressed ' if gz else ''}file has {decompressed:,}")
    klass = nib.Nifti2Image if isinstance(hdr, nib.Nifti2Header) else nib.Nifti1Image
    with captured() as notes:
        try:
            img = klass.from_bytes(raw)
        except Exception as exc:  # nibabel's HeaderDataError, ValueError, ... for bytes our checks let through
            raise InputError(notes.fold(f"{path}: not a readable NIfTI image ({one_line(exc, path)})")) from None
    img.set_filename(str(path))   # the voxels stay in memory; the name is kept for messages and for
    img.extra[INPUT_FILES] = [digest]     # refusing to write over the input
    if not float32:
        return img
    if voxels is None:                # not gzipped: nibabel converts the bytes in memory
        with np.errstate(all="ignore"), captured():
            return img, np.asarray(img.get_fdata(dtype=np.float32))
    return img, voxels.data.reshape(img.shape, order="F")


class VoxelsAsFloat32:
    """The sink of _gunzip for an image's decompressed bytes: the first vox_offset of them (header and
    extensions) are kept, the voxels after them are converted to float32 into one array (`data`, in file
    order) as nibabel's get_fdata(dtype=np.float32) converts them: the stored type, then the proxy's slope and
    intercept applied by nibabel's own apply_read_scaling with the same dtype choices as its ArrayProxy
    (_scaled_float32). Each piece is converted on a worker thread while the next one inflates (numpy and
    the inflater both release the GIL), so the whole decompressed file is never held, nor copied into
    nibabel's array and converted after."""

    PIECE = 4 * 2**20                  # stored bytes converted per step (a few MB: the temporaries stay small)

    def __init__(self, header):
        proxy = nib.arrayproxy.ArrayProxy(None, header)      # what nibabel would read the voxels with
        self.stored = proxy.dtype
        self.slope, self.inter = proxy.slope, proxy.inter
        # no scaling (slope 1, intercept 0: most CTs store HU as int16): nibabel casts the stored values, in one
        # rounding but for 64-bit integers (through float64 first)
        self.cast_only = (float(self.slope), float(self.inter)) == (1.0, 0.0) and (
            self.stored.kind == "f" or self.stored.itemsize <= 4)
        self.offset = int(header.get_data_offset())
        self.data = np.empty(int(np.prod(proxy.shape, dtype=np.int64)), np.float32)
        self.head = bytearray()
        self.carry = b""               # the bytes of a voxel split between two pieces
        self.filled = 0                # voxels converted (or queued)
        self.received = 0
        self.jobs: list = []
        from concurrent.futures import ThreadPoolExecutor
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="npunet-voxels-float32")

    def take(self, piece) -> None:
        piece = memoryview(piece)
        self.received += len(piece)
        if len(self.head) < self.offset:
            n = min(self.offset - len(self.head), len(piece))
            self.head += piece[:n]
            piece = piece[n:]
        room = (self.data.size - self.filled) * self.stored.itemsize - len(self.carry)
        piece = piece[:max(room, 0)]   # bytes past the voxels (a NIfTI file's slack) are not voxels
        if self.carry and len(piece):
            n = self.stored.itemsize - len(self.carry)
            joined, piece = self.carry + bytes(piece[:n]), piece[n:]
            self.carry = b""
            if len(joined) < self.stored.itemsize:
                self.carry = joined
            else:
                self._convert(joined)
        whole = len(piece) - len(piece) % self.stored.itemsize
        step = max(self.PIECE - self.PIECE % self.stored.itemsize, self.stored.itemsize)
        for start in range(0, whole, step):
            self._convert(piece[start:min(whole, start + step)])
        if whole < len(piece):
            self.carry = bytes(piece[whole:])

    def _convert(self, stored_bytes) -> None:
        raw = np.frombuffer(stored_bytes, self.stored)
        at = self.filled
        self.filled += raw.size
        self.jobs.append(self.pool.submit(self._write, raw, at))

    def _write(self, raw, at: int) -> None:
        out = self.data[at:at + raw.size]
        if self.cast_only:
            np.copyto(out, raw, casting="unsafe")  # astype(np.float32), without its temporary array
        else:
            out[...] = _scaled_float32(raw, self.slope, self.inter)

    def finish(self) -> bytes:
        """The header's bytes, once every piece is converted (a conversion's exception is raised here)."""
        for job in self.jobs:
            job.result()
        return bytes(self.head)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _scaled_float32(raw: np.ndarray, slope, inter) -> np.ndarray:
    """Stored voxels -> float32 as nibabel's ArrayProxy.__array__(dtype=np.float32) does (_get_scaled, then
    astype): slope and intercept made float32 where they fit, applied by nibabel.volumeutils.apply_read_scaling
    (which picks a wider float type for integers that would overflow), the result cast to float32.
    Elementwise, so a piece at a time gives the whole array's values (tests compare with get_fdata)."""
    from nibabel.volumeutils import apply_read_scaling
    slope, inter = np.asanyarray(slope), np.asanyarray(inter)
    if np.can_cast(slope, np.float32):
        slope = slope.astype(np.float32)
    if np.can_cast(inter, np.float32):
        inter = inter.astype(np.float32)
    with np.errstate(all="ignore"):
        scaled = apply_read_scaling(raw, slope, inter)
        scaled = scaled.astype(np.promote_types(scaled.dtype, np.float32), copy=False)
        return scaled.astype(np.float32, copy=False)


def _gunzip(data: bytes, limit: int, name, whole: bool = False, inflate=None, sink=None) -> bytes:
    """The first `limit` decompressed bytes of gzip data (fewer if it ends sooner), over every member (bgzip
    writes many), trailing zeros ignored; never keeps more than `limit`. inflate: a module with zlib's
    decompressobj (default INFLATE: ISA-L's when the `fast` extra is installed, else zlib; the same bytes).

    whole=True (reading an image, not peeking at its header): the data must also be one or more complete gzip
    members, each ending in its 8-byte trailer (CRC-32 and length), which the inflater checks. Bytes
    decompressed past `limit` are counted and dropped (at most `limit` of them: more is not a NIfTI file's
    slack). A stream that stops before or inside a trailer, a CRC or a length that does not match, is an
    InputError: the image is refused rather than read from a file that is not whole (the report's input digest
    vouches for a file read whole and intact). sink: a function that takes each decompressed piece in turn
    instead (VoxelsAsFloat32.take); b"" is then returned."""
    inflate = inflate or INFLATE
    errors = (zlib.error, inflate.error) if inflate is not zlib else zlib.error
    parts, total, pos, extra = [], 0, 0, 0
    view = memoryview(data)
    stream, pending = inflate.decompressobj(wbits=31), b""
    chunk_out = limit if sink is None else GZIP_CHUNK     # a sink converts while the next piece inflates
    try:
        while total < limit or whole:
            if not pending:
                if pos >= len(data):
                    break
                pending, pos = view[pos:pos + GZIP_CHUNK], pos + GZIP_CHUNK
            if total < limit:
                piece = stream.decompress(pending, min(limit - total, chunk_out))
                if sink is None:
                    parts.append(piece)
                else:
                    sink(piece)
                total += len(piece)
            else:                                           # past the image: check, count and drop
                extra += len(stream.decompress(pending, GZIP_CHUNK))
                if extra > limit:
                    raise InputError(f"{name}: the gzip stream holds more than twice the {limit:,} bytes the "
                                     f"header declares; not a NIfTI image as written by a NIfTI writer")
            pending = stream.unconsumed_tail
            if stream.eof:
                pending = stream.unused_data
                if not pending.strip(b"\0") and data.count(0, pos) == max(len(data) - pos, 0):
                    break                                   # only zero padding after the last member
                stream = inflate.decompressobj(wbits=31)
    except errors as exc:
        raise InputError(f"{name}: {_gzip_problem(exc)}") from None
    if whole and not stream.eof:
        where = ("inside its 8-byte trailer (CRC-32 and length)" if total >= limit
                 else "before the end of the image data")
        raise InputError(f"{name}: truncated gzip data: the stream stops {where}; the file is not whole "
                         f"(an interrupted copy or download?)")
    if sink is not None:
        return b""
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _gzip_problem(exc: Exception) -> str:
    """zlib's (or ISA-L's) error, said for a user: a CRC or length that does not match, or truncated or corrupt
    data."""
    text = one_line(exc)
    if "incorrect data check" in text:
        return ("corrupt gzip data: the CRC-32 in its trailer does not match the decompressed data (a damaged "
                "file)")
    if "incorrect length check" in text:
        return "corrupt gzip data: the length in its trailer does not match the decompressed data (a damaged file)"
    if "incorrect checksum" in text.lower():         # ISA-L's words for either (the `fast` extra)
        return ("corrupt gzip data: the CRC-32 or length in its trailer does not match the decompressed data (a "
                "damaged file)")
    return f"truncated or corrupt image data ({text})"


def read_ct(path: str | os.PathLike, assume_orientation: str | None = None) -> nib.Nifti1Image:
    """Load a NIfTI CT and validate it; the returned image holds its voxels in memory as float32 (HU).

    Raises InputError (one line, naming the file) for: a missing file, a folder, bytes that are not NIfTI,
    truncated or corrupt (gzip) data, a 2D image, a 4D image with more than one volume (a trailing axis of
    size 1 is accepted and squeezed), an axis of size 0, complex or RGB voxels, voxel sizes <= 0, a header
    without orientation (unless `assume_orientation`, axis codes such as "RAS", says how the axes run), a
    non-invertible affine, and NaN/Inf voxels; ResourceError when it would not fit in memory. All the
    checks are npunet.io.validate's.
    """
    path = Path(path)
    try:
        img, data = open_image(path, float32=True)
    except (EOFError, zlib.error, ValueError, OSError) as exc:
        raise InputError(f"{path}: truncated or corrupt image data ({one_line(exc, path)})") from None
    check_orientation(img.header, str(path), assume_orientation)
    stored = img.dataobj          # the file's proxy, never read: its type and scaling tell whether NaN or Inf can be
    if len(img.shape) > 3:        # a 4D image (trailing axes of size 1) is sliced as an array, not as the proxy
        img = type(img)(data, img.affine, img.header, extra=dict(img.extra))
        img.set_filename(str(path))
        img = _three_d(img, str(path))
        data = np.asarray(img.dataobj)
    else:
        img = _three_d(img, str(path))
    return _in_memory(img, data, str(path), stored=stored)


def validate_image(img: nib.spatialimages.SpatialImage, name: str = "image",
                   assume_orientation: str | None = None) -> nib.Nifti1Image:
    """The checks of `read_ct` for an image already in memory (the Python API); returns a float32 image."""
    if not hasattr(img, "affine") or not hasattr(img, "dataobj") or not hasattr(img, "shape"):
        raise InputError(f"{name}: not a nibabel image (got {type(img).__name__})")
    if img.affine is None and not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        raise InputError(f"{name}: the image has no affine")
    if not isinstance(img, (nib.Nifti1Image, nib.Nifti2Image)):
        img = nib.Nifti1Image(np.asanyarray(img.dataobj), img.affine)
    check_header_fields(img.header, name)
    check_orientation(img.header, name, assume_orientation)
    img = _three_d(img, name)
    check_memory(4 * int(np.prod(img.shape, dtype=np.float64)), f"{name} as float32")
    with np.errstate(all="ignore"), captured():
        data = np.asarray(img.get_fdata(dtype=np.float32))
    return _in_memory(img, data, name)


def _three_d(img, name: str):
    check_dims(tuple(int(s) for s in img.shape), name)
    if len(img.shape) > 3:
        extra = dict(img.extra)
        img = img.slicer[(slice(None),) * 3 + (0,) * (len(img.shape) - 3)]
        img.extra.update(extra)
    check_affine(img.affine if img.affine is not None else img.header.get_best_affine(), name)
    return img


def _in_memory(img, data: np.ndarray, name: str, stored=None) -> nib.Nifti1Image:
    if not _finite_by_construction(img.dataobj if stored is None else stored):
        check_voxels(data, name)
    header = img.header.copy()
    header.set_data_dtype(np.float32)
    header.set_slope_inter(np.nan, np.nan)
    out = type(img)(data, img.affine, header, extra=dict(img.extra))
    if img.get_filename():
        out.set_filename(img.get_filename())  # remembered so that writing over the input can be refused
    return out


def _finite_by_construction(dataobj) -> bool:
    """True when every voxel of `dataobj` (an image's nibabel array proxy, or an array) is a finite float32
    once read, whatever the file holds: integers stored, the proxy's slope and intercept finite, and the largest
    stored magnitude times the slope, plus the intercept, well within float32's range. check_voxels then has
    nothing to find (it took 0.07 s for a 512x512x300 CT on an Intel Xeon family 6 model 167). nibabel keeps a
    file's scl_slope / scl_inter on the proxy, not on the loaded image's header."""
    stored = np.dtype(getattr(dataobj, "dtype", object))
    if stored.kind not in "iu":
        return False
    slope, inter = getattr(dataobj, "slope", 1.0), getattr(dataobj, "inter", 0.0)
    slope, inter = 1.0 if slope is None else float(slope), 0.0 if inter is None else float(inter)
    if not (np.isfinite(slope) and np.isfinite(inter)):
        return False
    info = np.iinfo(stored)
    largest = abs(slope) * max(abs(int(info.min)), abs(int(info.max))) + abs(inter)
    return largest < float(np.finfo(np.float32).max) / 2


# ------------------------------------------------------------------------------------------- writing --

def labels_image(labels: np.ndarray, like: nib.Nifti1Image) -> nib.Nifti1Image:
    """A uint8 label image on `like`'s grid: same shape, affine, qform/sform (and codes), zooms, units.

    The header is `like`'s header with dtype uint8, scaling reset (scl_slope/scl_inter = NaN, i.e. none),
    intent "label", cal_min/cal_max the label range, description set, and header extensions dropped (an
    input's extension may carry, e.g., a Caret label table for another model, which would mislabel ours).
    """
    labels = np.asarray(labels)
    if labels.shape != tuple(like.shape[:3]):
        raise ValueError(f"labels of shape {labels.shape} do not match the image shape {like.shape}")
    if labels.dtype != np.uint8:
        if labels.size and (labels.min() < 0 or labels.max() > 255):
            raise ValueError(f"label values {labels.min()}..{labels.max()} do not fit uint8")
        labels = labels.astype(np.uint8)
    header = like.header.copy()
    header.extensions.clear()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(np.nan, np.nan)
    header.set_intent(NIFTI_INTENT_LABEL)
    header["cal_min"] = 0
    header["cal_max"] = int(labels.max()) if labels.size else 0
    header["descrip"] = b"npunet organ labels"
    img_class = nib.Nifti2Image if isinstance(like, nib.Nifti2Image) else nib.Nifti1Image
    out = img_class(labels, like.affine, header)
    # The constructor leaves the header alone when the affine already matches it; make sure it did.
    q_like, q_out = like.header.get_qform(coded=True), out.header.get_qform(coded=True)
    s_like, s_out = like.header.get_sform(coded=True), out.header.get_sform(coded=True)
    if q_like[1] != q_out[1] or s_like[1] != s_out[1]:
        raise AssertionError("labels_image changed the qform/sform codes")
    return out


def check_output_path(output: str | os.PathLike, input_path: str | os.PathLike | None = None,
                      overwrite: bool = False, also: tuple = (), suffixes: tuple = NIFTI_SUFFIXES) -> Path:
    """npunet.io.paths.check_output_file for a label map (and its `also` sidecars) made from `input_path`."""
    return check_output_file(output, (input_path,), overwrite, also, suffixes)


def is_masks_folder(folder: str | os.PathLike) -> bool:
    """True for a folder that write_organ_masks filled (it holds labels.json): one --overwrite may replace."""
    return (Path(folder) / MASKS_MARKER).is_file()


def check_output_folder(folder: str | os.PathLike, input_path: str | os.PathLike | None = None,
                        overwrite: bool = False) -> Path:
    """npunet.io.paths.check_output_folder for --split's folder of masks: only a folder of npunet masks
    (holding labels.json) may be replaced."""
    return _check_output_folder(folder, (input_path,), overwrite, may_replace=is_masks_folder,
                                kind="npunet masks", marker=MASKS_MARKER)


def write_labels(labels: np.ndarray, like: nib.Nifti1Image, path: str | os.PathLike, overwrite: bool = False,
                 label_names: dict[int, str] | None = None) -> Path:
    """Write `labels` (X, Y, Z) uint8 on `like`'s grid to `path`, plus the `.labels.json` name sidecar.

    label_names: {int: name}; defaults to npunet.labels.LABELS. Both files are written to temporary names in
    the output folder and published by npunet.publish.atomic_write (without overwrite, exclusively: of two
    runs writing the same output, one wins and the other gets "exists already"); on any failure no temporary
    file is left behind, and no label map without its sidecar. Refuses output == input, an existing output
    (or sidecar) without overwrite, and an unwritable folder.
    """
    path = Path(path)
    sidecar = labels_json_path(path)
    check_output_path(path, like.get_filename(), overwrite, also=(sidecar,))
    img = labels_image(labels, like)
    if label_names is None:
        label_names = _default_label_names()
    make_parent(path)
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)), overwrite=overwrite)
    try:
        write_label_names(label_names, sidecar, overwrite=overwrite)
    except BaseException:
        unpublish(path)          # no label map without its sidecar
        raise
    return path


def write_label_names(label_names: dict[int, str], path: str | os.PathLike, overwrite: bool = True) -> Path:
    """The label-name sidecar, {"0": "background", "1": "liver", ...} in label order, published by
    npunet.publish.atomic_write (overwrite=False: exclusively)."""
    text = json.dumps({str(int(k)): str(v) for k, v in sorted(label_names.items())}, indent=1) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), overwrite=overwrite)


MASKS_MARKER = "labels.json"   # the label-name sidecar inside a folder of masks; marks it as npunet's


def organ_mask_path(folder: str | os.PathLike, name: str) -> Path:
    """`folder/liver.nii.gz`: where write_organ_masks puts an organ's mask."""
    return Path(folder) / f"{name}.nii.gz"


def write_organ_masks(labels: np.ndarray, like: nib.Nifti1Image, folder: str | os.PathLike,
                      organs: dict[int, str]) -> list[Path]:
    """One uint8 mask per organ, 1 where labels == k else 0, as folder/NAME.nii.gz on `like`'s grid (as
    labels_image), for every {k: NAME} of `organs`, present or not (an absent organ's mask is all zeros, so
    a script can count on every file); plus the label-name sidecar folder/labels.json. Meant for a new
    folder from npunet.publish.staged_folder, which publishes it whole; returns the mask paths in label
    order."""
    folder = Path(folder)
    paths = []
    for k, name in sorted(organs.items()):
        mask = labels_image(np.asarray(labels) == k, like)
        mask.header["descrip"] = f"npunet mask: {name}"[:79].encode()
        path = organ_mask_path(folder, name)
        atomic_write(path, lambda tmp: nib.save(mask, str(tmp)))
        paths.append(path)
    write_label_names({0: _default_label_names()[0], **organs}, folder / MASKS_MARKER)
    return paths


def _default_label_names() -> dict[int, str]:
    from npunet.labels import LABELS  # written alongside; imported late so io has no hard dependency
    return dict(LABELS)



