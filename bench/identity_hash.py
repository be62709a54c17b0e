"""The md5 of every result file under a folder (bench/identity.sh), without what changes
from run to run and is not a result: timings (``seconds``) and the run's own path in JSON
records, comment lines of STAR files (a writer's time stamp), the zip entries' dates of
``.npz`` files (their arrays are hashed instead), the labels of MRC headers (mrcfile writes
its time there; the data, shape and voxel size are hashed). One line per file: ``md5  path``."""

import hashlib
import json
import sys
from pathlib import Path

import numpy as np

SUFFIXES = {".mrc", ".mrcs", ".star", ".npz", ".json"}


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in ("seconds", "path")}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def digest(path: Path) -> str:
    if path.suffix == ".json":
        data = json.dumps(_strip(json.loads(path.read_text())), sort_keys=True).encode()
    elif path.suffix == ".star":
        data = b"\n".join(line for line in path.read_bytes().splitlines() if not line.startswith(b"#"))
    elif path.suffix == ".npz":
        with np.load(path) as f:
            data = b"".join(k.encode() + np.ascontiguousarray(f[k]).tobytes() for k in sorted(f.files))
    elif path.suffix in (".mrc", ".mrcs"):
        import mrcfile

        with mrcfile.open(path, permissive=True) as f:
            data = (np.ascontiguousarray(f.data).tobytes() + str(f.data.shape).encode()
                    + str(float(f.voxel_size.x)).encode())
    else:
        data = path.read_bytes()
    return hashlib.md5(data).hexdigest()


def main(root: str) -> None:
    base = Path(root)
    for path in sorted(p for p in base.rglob("*") if p.is_file() and p.suffix in SUFFIXES):
        print(f"{digest(path)}  {path.relative_to(base)}")


if __name__ == "__main__":
    main(sys.argv[1])
