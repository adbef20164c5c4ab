"""Input and output: NIfTI and DICOM readers, the label-map writer, the INPUT -> OUTPUT job planner, and the
image validation layer (npunet.io.validate) they all go through."""

from npunet.io.cases import Job, case_name, plan_jobs, read_job
from npunet.io.dicom import read_dicom_series
from npunet.io.nifti import (check_output_path, hu_range_warning, labels_image, labels_json_path, read_ct,
                             validate_image, write_labels)
from npunet.io.validate import check_same_grid, image_warnings, orientation_affine, parse_axcodes
from npunet.publish import atomic_write

__all__ = ["Job", "case_name", "plan_jobs", "read_job", "read_dicom_series", "check_output_path",
           "hu_range_warning", "labels_image", "labels_json_path", "read_ct", "validate_image", "write_labels",
           "check_same_grid", "image_warnings", "orientation_affine", "parse_axcodes", "atomic_write"]
