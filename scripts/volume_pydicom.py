#!/usr/bin/env python3
"""The reference for `bench.py volume`: what the Python framework does to get a volume.

Reads every file in DIR with pydicom, decodes `pixel_array` (pylibjpeg plugins for
compressed data), applies RescaleSlope/Intercept in float32, sorts the slices along the
normal of ImageOrientationPatient by ImagePositionPatient and stacks them. Prints the
shape and mean so that the work cannot be skipped.
"""
import os, sys
import numpy as np
import pydicom


def main(folder):
    slices = []
    for name in sorted(os.listdir(folder)):
        ds = pydicom.dcmread(os.path.join(folder, name))
        o = [float(v) for v in ds.ImageOrientationPatient]
        normal = np.cross(o[:3], o[3:])
        position = float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient]))
        values = ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1)) + float(
            getattr(ds, "RescaleIntercept", 0))
        slices.append((position, values))
    slices.sort(key=lambda s: s[0])
    volume = np.stack([v for _, v in slices])
    print(volume.shape, float(volume.mean(dtype=np.float64)))


if __name__ == "__main__":
    main(sys.argv[1])
