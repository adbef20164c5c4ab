"""Everything that touches files and formats, one concern per module:

    ct.py         the one CT reader (a CT record: image, voxels, orientation, voxel sizes, warnings)
    cases.py      INPUT -> OUTPUT: which images a command reads and where each case's output goes
    nifti.py      reading NIfTI CTs; writing label maps, their label-name sidecars and per-organ masks
    dicom.py      reading a DICOM series into an image on the patient's grid
    dicom_seg.py  writing a DICOM Segmentation over the input series (highdicom)
    validate.py   whether an image can be segmented or scored, decided in one place
    paths.py      the one check of an output path, before any work
    statistics.py per-organ voxels, volumes and mean HU, as CSV and JSON
    preview.py    a PNG of axial and coronal slices with the labels blended in
Every file is written through npunet.publish (temporary name, then published; never half-written).
"""
