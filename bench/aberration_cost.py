"""What the optics groups' aberrations add to loading a batch: ``aberrations_for_rows`` against
``ctf_for_rows`` for 500 rows of 4 optics groups (beam tilt, odd and even Zernike terms).

    python bench/aberration_cost.py [--box 128]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import pandas as pd

from multirefine.refine.batch import aberrations_for_rows, ctf_for_rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--box", type=int, default=128)
    box = parser.parse_args().box
    n = 500
    rows = pd.DataFrame({"rlnSphericalAberration": 2.7, "rlnVoltage": 300.0, "rlnImagePixelSize": 1.0,
                         "rlnDefocusU": 15000.0, "rlnDefocusV": 14000.0, "rlnAmplitudeContrast": 0.1,
                         "rlnBeamTiltX": np.repeat([0.1, 0.2, 0.3, 0.4], n // 4), "rlnBeamTiltY": 0.1,
                         "rlnOddZernike": "[0.1,0.2]", "rlnEvenZernike": "[0,0.3]"}, index=range(n))
    for name, run in (("aberrations_for_rows", lambda: aberrations_for_rows(rows, box)),
                      ("ctf_for_rows", lambda: ctf_for_rows(rows, box))):
        run()
        started = time.perf_counter()
        for _ in range(10):
            run()
        print(f"{name}: {(time.perf_counter() - started) * 100:.0f} ms per batch of {n} at box {box}")


if __name__ == "__main__":
    main()
