"""Input and output: NIfTI and DICOM readers, the label-map writer, and the INPUT -> OUTPUT job planner."""

from npunet.io.cases import Job, case_name, plan_jobs, read_job
from npunet.io.dicom import read_dicom_series
from npunet.io.nifti import (check_output_path, hu_range_warning, labels_image, labels_json_path, read_ct,
                             validate_image, write_labels)

__all__ = ["Job", "case_name", "plan_jobs", "read_job", "read_dicom_series", "check_output_path",
           "hu_range_warning", "labels_image", "labels_json_path", "read_ct", "validate_image", "write_labels"]
