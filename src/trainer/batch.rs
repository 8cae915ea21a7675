//! The input side of the trainer: a split's images and proposals, and the
//! per-iteration transform (horizontal flip, rescale so the shorter side is
//! `scale` with the longer side capped at `max_size`, mean/std
//! normalisation), as tensor operations on the training device.
//!
//! Images: a split whose decoded size (3 bytes a pixel, from the
//! annotations' sizes) fits `dataset.cache_mib` is decoded up front, in
//! parallel, and held. A larger one is read from disk when an image is used:
//! the images read first are kept until the budget is spent (with images
//! drawn in random order, evicting would not hit more often), and the
//! consumer asks for the next few images ahead ([`ImageStore::ahead`]),
//! which worker threads decode while the network runs. Memory then stays at
//! the budget, whatever the split's size. Both give the same tensors. The
//! loader itself, [`Streamed`], serves any collection of images that an
//! [`ImageSource`] decodes by index: a split's files here, the pre-training's
//! source ([`crate::pretrain`]) too.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use rayon::prelude::*;
use tch::{Device, Kind, Tensor};

use crate::config::InputConfig;
use crate::boxes::BBox;
use crate::data::{Annotation, Dataset};

/// Proposals at least this far inside a COCO crowd region (intersection over
/// the proposal's area) are not trained on: Detectron's `CROWD_FILTER_THRESH`.
pub const CROWD_IOF: f64 = 0.7;

/// Images decoded ahead of their use, by how many the consumer asks for.
pub const AHEAD: usize = 4;

/// One image being decoded on a worker thread, into its `[3, H, W]` uint8 tensor.
struct Slot {
    done: Mutex<Option<anyhow::Result<Tensor>>>,
    ready: Condvar,
}

/// A collection of images that can be decoded one at a time, by index.
pub trait ImageSource: Send + Sync + 'static {
    /// How many images there are.
    fn len(&self) -> usize;
    /// Decodes image `i` (RGB8), with errors that name its file.
    fn decode(&self, i: usize) -> anyhow::Result<image::RgbImage>;
}

/// A split's image files: their paths and sizes (what decoding needs, not the annotations).
struct SplitFiles {
    ds: Dataset,
    files: Vec<(std::path::PathBuf, u32, u32)>,
}

impl SplitFiles {
    fn new(ds: &Dataset, anns: &[Annotation]) -> Self {
        SplitFiles { ds: ds.without_parses(), files: anns.iter().map(|a| (ds.image_path_of(a), a.width, a.height)).collect() }
    }
}

impl ImageSource for SplitFiles {
    fn len(&self) -> usize {
        self.files.len()
    }
    fn decode(&self, i: usize) -> anyhow::Result<image::RgbImage> {
        let (path, w, h) = &self.files[i];
        Ok(self.ds.load_image_file(path, *w, *h)?)
    }
}

/// Images read from their source as they are used: those read first are kept
/// until `budget` bytes are spent (drawn in random order, evicting would not
/// hit more often), and the next ones are decoded ahead on worker threads when
/// the consumer asks ([`Streamed::ahead`], at most `window` in flight). Memory:
/// the budget, the `window` images being decoded (and those given up, until
/// their worker finishes), and the images the consumer holds.
pub struct Streamed {
    source: Arc<dyn ImageSource>,
    budget: usize,
    window: usize,
    /// Bytes held and the decoded images (`[3, H, W]` uint8).
    cache: Mutex<(usize, HashMap<usize, Tensor>)>,
    ahead: Mutex<HashMap<usize, Arc<Slot>>>,
    stats: Mutex<LoaderStats>,
}

impl Streamed {
    pub fn new(source: Arc<dyn ImageSource>, budget: usize, window: usize) -> Self {
        Streamed { source, budget, window, cache: Mutex::new((0, HashMap::new())), ahead: Mutex::new(HashMap::new()), stats: Mutex::new(LoaderStats::default()) }
    }

    /// What the loader did so far.
    pub fn stats(&self) -> LoaderStats {
        *self.stats.lock().expect("loader stats")
    }

    /// Asks worker threads to decode these images now: the next ones the
    /// consumer will use, in order (at most `window` in flight; those held or
    /// already asked for are skipped). Images asked for before and not asked
    /// for again are given up (a worker may finish one, unused): an image
    /// that will not come next must not hold a slot that one that will could use.
    pub fn ahead(&self, indices: &[usize]) {
        let held = self.cache.lock().expect("image cache");
        let mut ahead = self.ahead.lock().expect("prefetch slots");
        ahead.retain(|i, _| indices.contains(i));
        for &i in indices {
            if ahead.len() >= self.window {
                break;
            }
            if i >= self.source.len() || held.1.contains_key(&i) || ahead.contains_key(&i) {
                continue;
            }
            let slot = Arc::new(Slot { done: Mutex::new(None), ready: Condvar::new() });
            ahead.insert(i, slot.clone());
            let source = self.source.clone();
            rayon::spawn(move || {
                // the worker makes the tensor too: the consumer only takes it
                let r = source.decode(i).map(|img| to_chw(&img));
                *slot.done.lock().expect("prefetch slot") = Some(r);
                slot.ready.notify_all();
            });
        }
    }

    /// Image `i` as `[3, H, W]` uint8 on the CPU.
    pub fn image(&self, i: usize) -> Result<Tensor> {
        if let Some(t) = self.cache.lock().expect("image cache").1.get(&i) {
            return Ok(t.shallow_clone());
        }
        let t0 = Instant::now();
        let slot = self.ahead.lock().expect("prefetch slots").remove(&i);
        let prefetched = slot.is_some();
        let t = match slot {
            Some(slot) => {
                let mut g = slot.done.lock().expect("prefetch slot");
                while g.is_none() {
                    g = slot.ready.wait(g).expect("prefetch slot");
                }
                g.take().expect("set before notify")?
            }
            None => to_chw(&self.source.decode(i)?),
        };
        {
            let mut st = self.stats.lock().expect("loader stats");
            st.decoded += 1;
            st.prefetched += prefetched as usize;
            st.stall += t0.elapsed();
        }
        let bytes = t.numel();
        let mut c = self.cache.lock().expect("image cache");
        if c.0 + bytes <= self.budget {
            c.0 += bytes;
            c.1.insert(i, t.shallow_clone());
        }
        Ok(t)
    }
}

/// Every image of `source`, as `[3, H, W]` uint8 tensors, decoded in parallel; each decoded
/// copy is dropped as soon as its tensor is made, so the peak is the tensors and one image a thread.
pub fn decode_all(source: &dyn ImageSource) -> Result<Vec<Tensor>> {
    (0..source.len()).into_par_iter().map(|i| source.decode(i).map(|img| to_chw(&img))).collect()
}

enum Images {
    /// `[3, H, W]` uint8 on the CPU, one per image.
    Memory(Vec<Tensor>),
    /// Read from the dataset's files as used.
    Disk(Streamed, Dataset),
}

/// What the loader did, for `bench data` and `metrics.csv`: images decoded from
/// disk, those of them a worker had decoded ahead ([`Streamed::ahead`]), and
/// the time the consumer waited for an image (decoding it itself, or waiting
/// for a worker).
#[derive(Debug, Clone, Copy, Default)]
pub struct LoaderStats {
    pub decoded: usize,
    pub prefetched: usize,
    pub stall: Duration,
}

/// Where a split's proposals are.
enum Proposals {
    /// `[P, 4]` float, 0-based pixels of the original image, one per image.
    Memory(Vec<Tensor>),
    /// A binary proposals file, read one image at a time; with the crowd
    /// filter's threshold once [`ImageStore::drop_crowd_proposals`] asked for it.
    File(crate::proposals::binary::BinaryProposals, Option<f64>),
}

/// One split: its annotations, proposals and ground truth, and its images.
pub struct ImageStore {
    pub anns: Vec<Annotation>,
    images: Images,
    proposals: Proposals,
    /// `[G, 4]` ground truth neither difficult nor crowd, 0-based; `[G]` labels in 1..=K.
    /// Kept as plain numbers and made into tensors as each image is prepared: two small tensors
    /// an image cost a few kilobytes each in libtorch's own bookkeeping.
    gt: Vec<(Vec<BBox>, Vec<i64>)>,
}

/// VOC 1-based boxes → `[n, 4]` 0-based.
fn to_tensor(boxes: &[BBox]) -> Tensor {
    let flat: Vec<f32> = boxes.iter().flat_map(|b| b.map(|v| v - 1.0)).collect();
    Tensor::from_slice(&flat).view([boxes.len() as i64, 4])
}

/// An image as `[3, H, W]` uint8.
fn to_chw(img: &image::RgbImage) -> Tensor {
    let (w, h) = (img.width() as i64, img.height() as i64);
    Tensor::from_slice(img.as_raw()).view([h, w, 3]).permute([2, 0, 1]).contiguous()
}

/// Bytes of a split's images decoded (3 a pixel).
pub fn decoded_bytes(anns: &[Annotation]) -> usize {
    anns.iter().map(|a| 3 * a.width as usize * a.height as usize).sum()
}

impl ImageStore {
    /// A split's store: decoded up front when its images fit `cache_mib`
    /// MiB, else read from disk as used (the module's doc).
    /// [`ImageStore::load`] with the proposals left in a binary proposals file,
    /// read as each image is used (every image of `anns` must be in it).
    pub fn load_with_file(ds: &Dataset, anns: Vec<Annotation>, file: crate::proposals::binary::BinaryProposals, cache_mib: u64) -> Result<Self> {
        if let Some(a) = anns.iter().find(|a| file.count(&a.id).is_none()) {
            anyhow::bail!("proposals file lacks image {:?}", a.id);
        }
        let empty = vec![Vec::new(); anns.len()];
        let mut s = Self::load(ds, anns, empty, cache_mib)?;
        s.proposals = Proposals::File(file, None);
        Ok(s)
    }

    pub fn load(ds: &Dataset, anns: Vec<Annotation>, proposals: Vec<Vec<BBox>>, cache_mib: u64) -> Result<Self> {
        let budget = (cache_mib as usize).saturating_mul(1 << 20);
        let files = SplitFiles::new(ds, &anns);
        if decoded_bytes(&anns) <= budget {
            let mut s = Self::from_parts(anns, &[], &proposals);
            s.images = Images::Memory(decode_all(&files)?);
            return Ok(s);
        }
        // check that every image is there before training starts; decoding waits for its turn
        if let Some((path, _, _)) = files.files.iter().find(|f| !f.0.is_file()) {
            return Err(crate::data::DataError::MissingImage { path: path.clone() }.into());
        }
        let mut s = Self::from_parts(anns, &[], &proposals);
        s.images = Images::Disk(Streamed::new(Arc::new(files), budget, AHEAD), ds.without_parses());
        Ok(s)
    }

    /// Whether the images are read from disk as used (the split exceeds the budget).
    pub fn streams(&self) -> bool {
        matches!(self.images, Images::Disk(..))
    }

    /// What the loader did so far (nothing for a split held in memory).
    pub fn loader_stats(&self) -> LoaderStats {
        match &self.images {
            Images::Disk(d, _) => d.stats(),
            Images::Memory(_) => LoaderStats::default(),
        }
    }

    /// Asks worker threads to decode these images now, the next ones to be used
    /// ([`Streamed::ahead`]). A no-op for a split held in memory.
    pub fn ahead(&self, indices: &[usize]) {
        if let Images::Disk(d, _) = &self.images {
            d.ahead(indices);
        }
    }

    /// Image `i` as `[3, H, W]` uint8 on the CPU.
    pub fn image(&self, i: usize) -> Result<Tensor> {
        match &self.images {
            Images::Memory(v) => Ok(v[i].shallow_clone()),
            Images::Disk(d, _) => d.image(i),
        }
    }

    /// A store from decoded images and their proposals (VOC 1-based boxes).
    pub fn from_parts(anns: Vec<Annotation>, images: &[image::RgbImage], proposals: &[Vec<BBox>]) -> Self {
        let images = Images::Memory(images.iter().map(to_chw).collect());
        let proposals = Proposals::Memory(proposals.iter().map(|p| to_tensor(p)).collect());
        let gt = anns
            .iter()
            .map(|a| {
                let keep: Vec<&crate::data::Object> = a.objects.iter().filter(|o| !o.difficult && !o.crowd).collect();
                let boxes: Vec<BBox> = keep.iter().map(|o| o.bbox).collect();
                let labels: Vec<i64> = keep.iter().map(|o| o.class as i64 + 1).collect();
                (boxes, labels)
            })
            .collect();
        ImageStore { anns, images, proposals, gt }
    }

    /// Keeps the images whose annotation passes `keep`; returns how many were dropped.
    pub fn keep_where(&mut self, keep: impl Fn(&Annotation) -> bool) -> usize {
        let flags: Vec<bool> = self.anns.iter().map(&keep).collect();
        let before = self.anns.len();
        let mut it = flags.iter();
        self.anns.retain(|_| *it.next().expect("one flag per image"));
        match &mut self.images {
            Images::Memory(v) => {
                let mut it = flags.iter();
                v.retain(|_| *it.next().expect("one flag per image"));
            }
            Images::Disk(d, ds) => {
                // held and asked-for images are keyed by index: start again over the images kept
                *d = Streamed::new(Arc::new(SplitFiles::new(ds, &self.anns)), d.budget, d.window);
            }
        }
        if let Proposals::Memory(v) = &mut self.proposals {
            // a file's proposals are found by image id
            let mut it = flags.iter();
            v.retain(|_| *it.next().expect("one flag per image"));
        }
        let mut it = flags.iter();
        self.gt.retain(|_| *it.next().expect("one flag per image"));
        before - self.anns.len()
    }

    /// Image `i`'s ground-truth labels (1..=K; neither difficult nor crowd).
    pub fn labels_of(&self, i: usize) -> &[i64] {
        &self.gt[i].1
    }

    pub fn len(&self) -> usize {
        self.anns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.anns.is_empty()
    }

    /// `[P]` each proposal's best IoU with a difficult box or a crowd region of image `i`
    /// (0 when it has none), in the original image's pixels (IoU does not change with the scale).
    pub fn difficult_iou(&self, i: usize) -> Result<Tensor> {
        Ok(self.difficult_iou_of(i, &self.proposals_of(i)?))
    }

    /// [`ImageStore::difficult_iou`] of other boxes `p` `[P, 4]` of image `i` (0-based pixels
    /// of the original image): Faster R-CNN's proposals.
    pub fn difficult_iou_of(&self, i: usize, p: &Tensor) -> Tensor {
        let boxes: Vec<BBox> = self.anns[i].objects.iter().filter(|o| o.difficult || o.crowd).map(|o| o.bbox).collect();
        let p = p.shallow_clone();
        if boxes.is_empty() {
            return Tensor::zeros([p.size()[0]], (tch::Kind::Float, p.device()));
        }
        crate::model::box_coder::iou_matrix(&p, &to_tensor(&boxes).to_device(p.device())).amax([1], false)
    }

    /// Image `i`'s proposals, `[P, 4]` float, 0-based pixels of the original image.
    pub fn proposals_of(&self, i: usize) -> Result<Tensor> {
        match &self.proposals {
            Proposals::Memory(v) => Ok(v[i].shallow_clone()),
            Proposals::File(f, crowd) => {
                let a = &self.anns[i];
                let p = to_tensor(&f.read(&a.id, a.width, a.height)?);
                Ok(match crowd {
                    Some(thresh) => without_crowd(a, &p, *thresh).0,
                    None => p,
                })
            }
        }
    }

    /// Drops the proposals that lie at least `thresh` inside a crowd region
    /// (intersection over the proposal's area, Detectron's `CROWD_FILTER_THRESH`),
    /// so that no sampler takes them as foreground or background. Returns how
    /// many, or `None` for proposals in a file, filtered as each image is read.
    pub fn drop_crowd_proposals(&mut self, thresh: f64) -> Option<i64> {
        match &mut self.proposals {
            Proposals::File(_, crowd) => {
                *crowd = Some(thresh);
                None
            }
            Proposals::Memory(v) => {
                let mut dropped = 0;
                for (a, p) in self.anns.iter().zip(v.iter_mut()) {
                    let (kept, n) = without_crowd(a, p, thresh);
                    dropped += n;
                    *p = kept;
                }
                Some(dropped)
            }
        }
    }

    pub fn n_proposals(&self, i: usize) -> Result<i64> {
        match &self.proposals {
            Proposals::Memory(v) => Ok(v[i].size()[0]),
            Proposals::File(f, None) => Ok(f.count(&self.anns[i].id).unwrap_or(0) as i64),
            Proposals::File(_, Some(_)) => Ok(self.proposals_of(i)?.size()[0]),
        }
    }
}

/// `p` without the proposals at least `thresh` inside a crowd region of `a`, and how many those were.
fn without_crowd(a: &Annotation, p: &Tensor, thresh: f64) -> (Tensor, i64) {
    let crowd: Vec<BBox> = a.objects.iter().filter(|o| o.crowd).map(|o| o.bbox).collect();
    if crowd.is_empty() || p.size()[0] == 0 {
        return (p.shallow_clone(), 0);
    }
    let c = to_tensor(&crowd);
    let col = |t: &Tensor, k: i64| t.select(1, k);
    let (px1, py1, px2, py2) = (col(p, 0).unsqueeze(1), col(p, 1).unsqueeze(1), col(p, 2).unsqueeze(1), col(p, 3).unsqueeze(1));
    let (cx1, cy1, cx2, cy2) = (col(&c, 0).unsqueeze(0), col(&c, 1).unsqueeze(0), col(&c, 2).unsqueeze(0), col(&c, 3).unsqueeze(0));
    // inclusive pixels, as crate::boxes
    let iw = (px2.minimum(&cx2) - px1.maximum(&cx1) + 1.0).clamp_min(0.0);
    let ih = (py2.minimum(&cy2) - py1.maximum(&cy1) + 1.0).clamp_min(0.0);
    let area = (&px2 - &px1 + 1.0) * (&py2 - &py1 + 1.0);
    let iof = (iw * ih / area).amax([1], false);
    let keep = iof.lt(thresh).nonzero().squeeze_dim(1);
    let dropped = p.size()[0] - keep.size()[0];
    (p.index_select(0, &keep), dropped)
}

/// One image ready for the network.
pub struct Prepared {
    pub index: usize,
    /// `[3, h, w]` normalised float.
    pub image: Tensor,
    /// Input-size over original-size factor.
    pub scale: f64,
    /// `[P, 4]` proposals in input pixels.
    pub proposals: Tensor,
    /// `[G, 4]` ground truth in input pixels and `[G]` labels.
    pub gt: Tensor,
    pub gt_labels: Tensor,
    /// Whether the image was flipped, and its width before scaling.
    pub flipped: bool,
    pub width: i64,
}

impl Prepared {
    /// Boxes `[M, 4]` in 0-based pixels of the original image to this input's pixels: flipped
    /// when the image was, then scaled.
    pub fn to_input(&self, boxes: &Tensor) -> Tensor {
        let b = boxes.to_device(self.image.device());
        let b = if self.flipped { flip_boxes(&b, self.width) } else { b };
        b * self.scale
    }
}

fn flip_boxes(b: &Tensor, w: i64) -> Tensor {
    let x1 = (w - 1) as f64 - b.select(1, 2);
    let x2 = (w - 1) as f64 - b.select(1, 0);
    Tensor::stack(&[x1, b.select(1, 1), x2, b.select(1, 3)], 1)
}

pub fn prepare(store: &ImageStore, i: usize, cfg: &InputConfig, flip: bool, device: Device) -> Result<Prepared> {
    let raw = store.image(i)?.to_device(device); // [3, H, W] u8
    let (_, h, w) = raw.size3().expect("[3, H, W]");
    let mean = Tensor::from_slice(&cfg.pixel_mean.map(|v| v as f32)).to_device(device).view([3, 1, 1]);
    let std = Tensor::from_slice(&cfg.pixel_std.map(|v| v as f32)).to_device(device).view([3, 1, 1]);
    let mut img = (raw.to_kind(Kind::Float) - mean) / std; // [3, H, W]
    let (mut props, mut gt) = (store.proposals_of(i)?.to_device(device), to_tensor(&store.gt[i].0).to_device(device));
    if flip {
        img = img.flip([2]);
        props = flip_boxes(&props, w);
        gt = flip_boxes(&gt, w);
    }
    let s = cfg.scale_for(h, w);
    let (nh, nw) = ((h as f64 * s).round() as i64, (w as f64 * s).round() as i64);
    let image = img.unsqueeze(0).upsample_bilinear2d([nh, nw], false, None, None).squeeze_dim(0); // [3, nh, nw]
    Ok(Prepared { index: i, image, scale: s, proposals: props * s, gt: gt * s, gt_labels: Tensor::from_slice(&store.gt[i].1).to_device(device), flipped: flip, width: w })
}

/// Zero-pads images to a common size: `[N, 3, Hmax, Wmax]`.
pub fn collate(batch: &[Prepared]) -> Tensor {
    let hmax = batch.iter().map(|p| p.image.size()[1]).max().unwrap_or(1);
    let wmax = batch.iter().map(|p| p.image.size()[2]).max().unwrap_or(1);
    let padded: Vec<Tensor> = batch
        .iter()
        .map(|p| {
            let (_, h, w) = p.image.size3().expect("[3, h, w]");
            p.image.constant_pad_nd([0, wmax - w, 0, hmax - h])
        })
        .collect();
    Tensor::stack(&padded, 0)
}
