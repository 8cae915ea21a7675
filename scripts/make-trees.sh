#!/usr/bin/env bash
# The real-photograph dataset of results/trees: hand-labelled aerial photographs of forest
# (NEON sites; tree crowns boxed by hand) shipped in the `deepforest` wheel on PyPI (MIT licence),
# cut into 400-px tiles by `harness tile`, in the VOC layout, at data/trees (or $1).
#
# The wheel is only downloaded (`pip download --no-deps`, never installed: installing pulls in
# heavy dependencies) and read as a zip; its four labelled images are split by image, so that no
# test tile neighbours a training tile:
#   trainval: 2019_YELL_2_528000_4978000_image_crop2 (2299x2472, 574 crowns, Yellowstone),
#             OSBS_029 (400x400, 61 crowns, Florida)
#   test:     2019_YELL_2_541000_4977000_image_crop (1249x1035, 279 crowns, Yellowstone, 13 km
#             from the training crop), SOAP_061 (400x400, 37 crowns labelled Dead/Alive, California)
# One class, `Tree` (SOAP's Dead and Alive are mapped to it). Training tiles overlap by 100 px,
# so that a crown cut by one tile's edge is whole in its neighbour; test tiles do not overlap,
# except that the last tile of a row or column is moved back to end at the image's edge (see
# `harness tile --help`). Boxes cut by a tile edge: kept at >= 70% inside, difficult at 30-70%
# (neither trained on nor counted by VOC AP), dropped below 30% (the defaults).
#
# With --pool (./scripts/make-trees.sh --pool [out], default data/trees-pool): the same four
# photographs cut into 400-px tiles without overlap (the last tile of a row or column still moved
# back to the edge) into one split, `all`, for grids that resample the split themselves
# (`splits:`, experiments/trees-splits.yaml); each tile's source photograph and position are in
# the root's tiles.csv, which grouping by photograph or by spatial block reads.
set -euo pipefail
cd "$(dirname "$0")/.."
pool=0
if [ "${1:-}" = "--pool" ]; then pool=1; shift; fi
if [ $pool = 1 ]; then out=${1:-data/trees-pool}; else out=${1:-data/trees}; fi
H=${HARNESS:-./target/release/harness}
[ -x "$H" ] || { echo "error: $H not found; run cargo build --release --locked first" >&2; exit 1; }
if [ -e "$out" ]; then echo "error: $out exists; remove it or give another folder" >&2; exit 1; fi
cache=${XDG_CACHE_HOME:-$HOME/.cache}/ohem-harness/deepforest
whl=$cache/deepforest-2.1.0-py3-none-any.whl
if [ ! -f "$whl" ]; then
  mkdir -p "$cache"
  python3 -m pip download --quiet --no-deps --only-binary=:all: deepforest==2.1.0 -d "$cache" \
    || { echo "error: pip download deepforest==2.1.0 failed (is PyPI reachable?)" >&2; exit 1; }
fi
# the wheel this dataset was made from; another file under the same name is refused
sha=8c2798d8e9be7f0004b194fe207b76c1d9fff6e711b3db67b9508dcd5d00ae54
echo "$sha  $whl" | sha256sum --check --quiet - \
  || { echo "error: $whl is not the deepforest 2.1.0 wheel this dataset was made from (sha256 $sha)" >&2; exit 1; }
src=$(mktemp -d)
part="$out.partial"   # built here and renamed at the end, so a failed run leaves no half dataset at $out
rm -rf "$part"
trap 'rm -rf "$src" "$part"' EXIT
python3 - "$whl" "$src" <<'PY'
import sys, zipfile
whl, dst = sys.argv[1], sys.argv[2]
want = ["2019_YELL_2_528000_4978000_image_crop2", "2019_YELL_2_541000_4977000_image_crop", "OSBS_029", "SOAP_061"]
import xml.etree.ElementTree as ET
def read(z, name):
    try:
        return z.read(f"deepforest/data/{name}")
    except KeyError:
        sys.exit(f"error: {whl} lacks deepforest/data/{name}")
with zipfile.ZipFile(whl) as z:
    for stem in want:
        xml = read(z, f"{stem}.xml")
        image = ET.fromstring(xml).findtext("filename").strip()  # OSBS_029 names its TIFF
        open(f"{dst}/{stem}.xml", "wb").write(xml)
        open(f"{dst}/{image}", "wb").write(read(z, image))
PY
if [ $pool = 1 ]; then
  "$H" tile --out "$part" --split all --size 400 --overlap 0 --class-map Dead=Tree,Alive=Tree \
    "$src/2019_YELL_2_528000_4978000_image_crop2.xml" "$src/OSBS_029.xml" \
    "$src/2019_YELL_2_541000_4977000_image_crop.xml" "$src/SOAP_061.xml"
else
  "$H" tile --out "$part" --split trainval --size 400 --overlap 100 --class-map Dead=Tree,Alive=Tree \
    "$src/2019_YELL_2_528000_4978000_image_crop2.xml" "$src/OSBS_029.xml"
  "$H" tile --out "$part" --split test --size 400 --overlap 0 --class-map Dead=Tree,Alive=Tree \
    "$src/2019_YELL_2_541000_4977000_image_crop.xml" "$src/SOAP_061.xml"
fi
echo "$sha  $(basename "$whl")" > "$part/SOURCE"
mv "$part" "$out"
echo "$out: made from $(basename "$whl") (sha256 $sha)"
