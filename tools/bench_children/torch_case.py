"""One whole case with the torch forward (tools/torch_pipeline.py) in a fresh process, printing
`BENCH_JSON {...}`: read, segment (the whole torch pipeline) and write seconds, and peak resident memory."""

import json
import resource
import sys
import time

t_start = time.perf_counter()

from npunet.resources import small_pages_for_large_arrays  # noqa: E402

small_pages_for_large_arrays()          # as npunet's own case, before NumPy is imported

import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from npunet.weights import default_weights_path  # noqa: E402
from tools.torch_pipeline import segment_array_torch, torch_model_from_weights  # noqa: E402


def main(argv) -> int:
    ct, out, threads = argv[0], argv[1], int(argv[2])
    torch.set_num_threads(threads)
    record = {}
    model, header = torch_model_from_weights(default_weights_path())
    t = time.perf_counter()
    img = nib.load(ct)
    volume = np.asarray(img.dataobj, dtype=np.float32)
    record["read"] = time.perf_counter() - t
    t = time.perf_counter()
    labels = segment_array_torch(volume, img.affine, model, header["preprocessing"])
    record["segment"] = time.perf_counter() - t
    t = time.perf_counter()
    labels_img = nib.Nifti1Image(labels, img.affine, img.header)
    labels_img.set_data_dtype(np.uint8)
    nib.save(labels_img, out)
    record["write"] = time.perf_counter() - t
    record["in_process_s"] = time.perf_counter() - t_start
    record["maxrss_kib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print("BENCH_JSON " + json.dumps(record), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
