"""pycocotools' COCOeval (bbox) on cases written by the test suite or `harness bench eval --coco`.

    python coco_reference.py CASE_DIR [CASE_DIR ...]

Each CASE_DIR holds gt.json (an instances file) and dets.json (a results list). Prints one JSON
object: {"version": ..., "cases": [{"stats": [12 numbers], "seconds": evaluate+accumulate+summarize}]}.
"""
import contextlib
import io
import json
import sys
import time

from importlib.metadata import version

from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval


def run(case):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(f"{case}/gt.json")
        with open(f"{case}/dets.json") as f:
            dets = json.load(f)
        t = time.perf_counter()
        # loadRes refuses an empty list; pycocotools' own callers skip evaluation then
        dt = gt.loadRes(dets) if dets else COCO()
        if not dets:
            dt.dataset = {"images": gt.dataset["images"], "categories": gt.dataset["categories"], "annotations": []}
            dt.createIndex()
        e = COCOeval(gt, dt, "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
        seconds = time.perf_counter() - t
    return {"stats": [float(v) for v in e.stats], "seconds": seconds}


if __name__ == "__main__":
    out = {"version": version("pycocotools"), "cases": [run(c) for c in sys.argv[1:]]}
    print(json.dumps(out))
