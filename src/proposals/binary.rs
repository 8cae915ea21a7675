//! The binary proposals file: read one image at a time, so that a split's
//! proposals need not be held in memory (COCO train2017 at 2,000 boxes an
//! image is 3.8 GB of boxes; the text format is 236 million lines).
//!
//! Layout, little-endian:
//! - `OHEMPRP1` (8 bytes), the image count `n` (u64);
//! - `n` index entries of 24 bytes: the id's offset (u64) and length (u32)
//!   in the id block, the box count (u32), the first box's offset (u64);
//! - the id block (UTF-8, unseparated);
//! - the boxes, each `x1 y1 x2 y2` as f32, 1-based inclusive pixels like VOC
//!   annotations, an image's boxes in rank order.
//!
//! Opening reads the header, the index and the ids, and checks every entry:
//! its id inside the id block, its boxes inside the box region that follows
//! (offsets added with overflow checks, nothing allocated beyond the file's
//! size), so that a corrupt index fails at open rather than mid-training; a
//! read takes one `pread`. Every error names the file, and the image (or the
//! index entry) where there is one.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::boxes::BBox;

pub const MAGIC: &[u8; 8] = b"OHEMPRP1";
const ENTRY: u64 = 24;

/// Whether a file starts with [`MAGIC`] (else it is read as the text format).
pub fn is_binary(path: &Path) -> bool {
    let mut head = [0u8; 8];
    std::fs::File::open(path).and_then(|f| f.read_exact_at(&mut head, 0)).is_ok() && &head == MAGIC
}

/// Writes proposals in the binary format.
pub fn write(path: &Path, ids: &[&str], boxes: &[Vec<BBox>]) -> Result<()> {
    let n = ids.len() as u64;
    let id_bytes: usize = ids.iter().map(|s| s.len()).sum();
    let ids_at = 16 + n * ENTRY;
    let boxes_at = ids_at + id_bytes as u64;
    let mut out = Vec::with_capacity(boxes_at as usize + boxes.iter().map(|b| b.len() * 16).sum::<usize>());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&n.to_le_bytes());
    let (mut id_off, mut box_off) = (ids_at, boxes_at);
    for (id, b) in ids.iter().zip(boxes) {
        out.extend_from_slice(&id_off.to_le_bytes());
        out.extend_from_slice(&(id.len() as u32).to_le_bytes());
        out.extend_from_slice(&(b.len() as u32).to_le_bytes());
        out.extend_from_slice(&box_off.to_le_bytes());
        id_off += id.len() as u64;
        box_off += b.len() as u64 * 16;
    }
    for id in ids {
        out.extend_from_slice(id.as_bytes());
    }
    for b in boxes.iter().flatten() {
        for v in b {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    crate::rundir::write_file(path, &out)?;
    Ok(())
}

/// One index entry, as stored.
struct Entry {
    id_off: u64,
    id_len: u32,
    count: u32,
    box_off: u64,
}

impl Entry {
    fn parse(e: &[u8]) -> Entry {
        let u64_at = |k: usize| u64::from_le_bytes(e[k..k + 8].try_into().expect("8 bytes"));
        let u32_at = |k: usize| u32::from_le_bytes(e[k..k + 4].try_into().expect("4 bytes"));
        Entry { id_off: u64_at(0), id_len: u32_at(8), count: u32_at(12), box_off: u64_at(16) }
    }
}

/// An open binary proposals file.
pub struct BinaryProposals {
    path: PathBuf,
    file: std::fs::File,
    /// id → (box count, offset of the first box)
    index: HashMap<String, (u32, u64)>,
    ids: Vec<String>,
}

impl BinaryProposals {
    /// Opens a file and checks its whole index: every id lies inside the id
    /// block and every image's boxes inside the box region, all offsets added
    /// with overflow checks, so a corrupt index is refused here (naming the
    /// file and the image, or the index entry) and never mid-training.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).with_context(|| format!("opening proposals file {}", path.display()))?;
        let len = file.metadata().with_context(|| format!("reading {}", path.display()))?.len();
        let bad = |msg: String| anyhow::anyhow!("proposals file {}: {msg}", path.display());
        // `n` bytes at `at`, once they are known to lie inside the file (so no allocation exceeds it)
        let read = |at: u64, n: u64| -> Result<Vec<u8>> {
            match at.checked_add(n) {
                Some(end) if end <= len => {}
                _ => return Err(bad(format!("truncated: {len} bytes, {n} needed at byte {at}"))),
            }
            let mut b = vec![0u8; n as usize];
            file.read_exact_at(&mut b, at).with_context(|| format!("reading {}", path.display()))?;
            Ok(b)
        };
        let head = read(0, 16)?;
        if &head[..8] != MAGIC {
            bail!(bad("not a binary proposals file (no OHEMPRP1 header)".into()));
        }
        let n = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        let table = read(16, n.checked_mul(ENTRY).ok_or_else(|| bad(format!("{n} images is too many")))?)?;
        let entries: Vec<Entry> = table.chunks_exact(ENTRY as usize).map(Entry::parse).collect();
        // the id block follows the index, the boxes follow the id block
        let ids_at = 16 + n * ENTRY; // the index was read, so this lies inside the file
        let mut ids_end = ids_at;
        for (i, e) in entries.iter().enumerate() {
            let end = ids_end.checked_add(e.id_len as u64).filter(|&end| end <= len);
            ids_end = end.ok_or_else(|| bad(format!("index entry {i}: its id of {} bytes ends the id block past the file's {len} bytes (truncated or corrupt)", e.id_len)))?;
        }
        let mut index = HashMap::with_capacity(entries.len());
        let mut ids = Vec::with_capacity(entries.len());
        for (i, e) in entries.iter().enumerate() {
            let id_end = e.id_off.checked_add(e.id_len as u64);
            if e.id_off < ids_at || id_end.is_none_or(|end| end > ids_end) {
                bail!(bad(format!("index entry {i}: its id ({} bytes at byte {}) lies outside the id block, bytes {ids_at}..{ids_end}", e.id_len, e.id_off)));
            }
            let id = String::from_utf8(read(e.id_off, e.id_len as u64)?).map_err(|_| bad(format!("index entry {i}: its id at byte {} is not UTF-8", e.id_off)))?;
            if e.box_off < ids_end {
                bail!(bad(format!("image {id:?} (index entry {i}): its boxes at byte {} lie before the box region, bytes {ids_end}..{len}", e.box_off)));
            }
            if (e.count as u64).checked_mul(16).and_then(|b| e.box_off.checked_add(b)).is_none_or(|end| end > len) {
                bail!(bad(format!("image {id:?} (index entry {i}): its {} boxes at byte {} end past the file's {len} bytes (truncated or corrupt)", e.count, e.box_off)));
            }
            if index.insert(id.clone(), (e.count, e.box_off)).is_some() {
                bail!(bad(format!("image {id:?} appears twice")));
            }
            ids.push(id);
        }
        Ok(BinaryProposals { path: path.to_path_buf(), file, index, ids })
    }

    /// The image ids, in file order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// How many boxes an image has, `None` if the file lacks it.
    pub fn count(&self, id: &str) -> Option<usize> {
        self.index.get(id).map(|e| e.0 as usize)
    }

    /// One image's boxes; each must lie inside its `width` × `height` image.
    pub fn read(&self, id: &str, width: u32, height: u32) -> Result<Vec<BBox>> {
        let &(count, at) = self.index.get(id).with_context(|| format!("{}: no proposals for image {id:?}", self.path.display()))?;
        let mut b = vec![0u8; count as usize * 16];
        self.file.read_exact_at(&mut b, at).with_context(|| format!("reading {}", self.path.display()))?;
        let boxes: Vec<BBox> = b
            .chunks_exact(16)
            .map(|c| {
                let f = |k: usize| f32::from_le_bytes(c[4 * k..4 * k + 4].try_into().expect("4 bytes"));
                [f(0), f(1), f(2), f(3)]
            })
            .collect();
        if let Some(x) = boxes.iter().find(|x| !(x[0] >= 1.0 && x[1] >= 1.0 && x[2] >= x[0] && x[3] >= x[1] && x[2] <= width as f32 && x[3] <= height as f32)) {
            bail!("{}: box {:?} of image {id:?} is not a box inside its {width}x{height} image", self.path.display(), x);
        }
        Ok(boxes)
    }
}
