#!/usr/bin/env bash
# Run here, on the machine without a GPU: fetch into .whl/ (ignored by git) the wheels that the
# GPU machine's image lacks or has at other versions, at the versions installed here, for its
# Python 3.12. bitsandbytes is slimmed to its CUDA 13 and CPU libraries (43 MB -> 7 MB),
# so the whole carry stays well under the device's 64 MiB. Then, on the GPU machine:
#   bash bench/gpu_run.sh            (carry .whl; see the header of that script)
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
version() { "$py" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }
names=(trl bitsandbytes datasets transformers peft accelerate dill multiprocess pydantic
       pydantic-core annotated-types typing-inspection platformdirs)
pins=()
for n in "${names[@]}"; do pins+=("$n==$(version "$n")"); done
download() {
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$@"
}
rm -rf .whl
mkdir -p .whl/alt
download .whl "${pins[@]}"
# datasets 5 needs pyarrow >= 24; gpu_run.sh falls back to this one if the image's is older
download .whl/alt "datasets==4.8.5"
"$py" - .whl/bitsandbytes-*.whl <<'EOF'
"""Rewrite the bitsandbytes wheel without the libraries of other CUDA and ROCm versions."""
import re
import sys
import zipfile

path = sys.argv[1]
keep = re.compile(r"libbitsandbytes_(cpu|cuda13\d)\.")
with zipfile.ZipFile(path) as src:
    items = [(i, src.read(i)) for i in src.infolist()]
drop = {i.filename for i, _ in items
        if "/libbitsandbytes_" in "/" + i.filename and not keep.search(i.filename)}
with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as out:
    for info, data in items:
        if info.filename in drop:
            continue
        if info.filename.endswith(".dist-info/RECORD"):
            data = b"".join(line for line in data.splitlines(keepends=True)
                            if line.split(b",")[0].decode() not in drop)
        out.writestr(info, data)
print(f"bitsandbytes: dropped {len(drop)} libraries for other CUDA/ROCm versions")
EOF
ls -la .whl .whl/alt
du -sh .whl
