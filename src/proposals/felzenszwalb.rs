//! Felzenszwalb & Huttenlocher (IJCV 2004) graph-based segmentation, the
//! initial regions of selective search.
//!
//! The image is smoothed with a Gaussian (sigma), pixels are joined on an
//! 8-connected grid with edge weight = Euclidean colour distance (channels on a
//! 0-255 scale, so `k` means what it means in the paper), edges are visited by
//! increasing weight and two components merge when the edge is no heavier than
//! either component's internal difference plus `k / |C|`. Components smaller
//! than `min_size` are merged into a neighbour afterwards.

/// An image as planar channels, `[c][y * w + x]`.
pub struct Planes {
    pub w: usize,
    pub h: usize,
    pub ch: Vec<Vec<f32>>,
}

/// Separable Gaussian blur of every channel, with clamped borders.
pub fn gaussian_blur(p: &Planes, sigma: f32) -> Planes {
    if sigma <= 0.0 {
        return Planes { w: p.w, h: p.h, ch: p.ch.clone() };
    }
    let r = (4.0 * sigma).ceil() as i64;
    let mut k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let s: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= s);
    let (w, h) = (p.w as i64, p.h as i64);
    let ch = p
        .ch
        .iter()
        .map(|src| blur_pass(&blur_pass(src, w, h, &k, r, true), w, h, &k, r, false))
        .collect();
    Planes { w: p.w, h: p.h, ch }
}

struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        UnionFind { parent: (0..n as u32).collect(), size: vec![1; n] }
    }
    fn find(&mut self, mut x: u32) -> u32 {
        while self.parent[x as usize] != x {
            let p = self.parent[x as usize];
            self.parent[x as usize] = self.parent[p as usize];
            x = p;
        }
        x
    }
    /// Joins two roots; returns the new root.
    fn join(&mut self, a: u32, b: u32) -> u32 {
        let (big, small) = if self.size[a as usize] >= self.size[b as usize] { (a, b) } else { (b, a) };
        self.parent[small as usize] = big;
        self.size[big as usize] += self.size[small as usize];
        big
    }
}

/// Segments `img` (channels on a 0-255 scale). Returns a label per pixel in
/// `0..n` and `n`.
pub fn segment(img: &Planes, sigma: f32, k: f32, min_size: usize) -> (Vec<u32>, usize) {
    let sm = gaussian_blur(img, sigma);
    let (w, h) = (sm.w, sm.h);
    let dist = |a: usize, b: usize| -> f32 {
        sm.ch.iter().map(|c| (c[a] - c[b]) * (c[a] - c[b])).sum::<f32>().sqrt()
    };
    let mut edges: Vec<(f32, u32, u32)> = Vec::with_capacity(w * h * 4);
    for y in 0..h {
        for x in 0..w {
            let a = y * w + x;
            if x + 1 < w {
                edges.push((dist(a, a + 1), a as u32, (a + 1) as u32));
            }
            if y + 1 < h {
                edges.push((dist(a, a + w), a as u32, (a + w) as u32));
            }
            if x + 1 < w && y + 1 < h {
                edges.push((dist(a, a + w + 1), a as u32, (a + w + 1) as u32));
            }
            if x + 1 < w && y > 0 {
                edges.push((dist(a, a - w + 1), a as u32, (a - w + 1) as u32));
            }
        }
    }
    edges.sort_unstable_by(|a, b| a.0.total_cmp(&b.0));
    let mut uf = UnionFind::new(w * h);
    let mut thresh = vec![k; w * h];
    for &(wt, a, b) in &edges {
        let (ra, rb) = (uf.find(a), uf.find(b));
        if ra != rb && wt <= thresh[ra as usize] && wt <= thresh[rb as usize] {
            let r = uf.join(ra, rb);
            thresh[r as usize] = wt + k / uf.size[r as usize] as f32;
        }
    }
    for &(_, a, b) in &edges {
        let (ra, rb) = (uf.find(a), uf.find(b));
        if ra != rb && ((uf.size[ra as usize] as usize) < min_size || (uf.size[rb as usize] as usize) < min_size) {
            uf.join(ra, rb);
        }
    }
    let mut map = vec![u32::MAX; w * h];
    let mut labels = vec![0u32; w * h];
    let mut n = 0u32;
    for (i, l) in labels.iter_mut().enumerate() {
        let r = uf.find(i as u32) as usize;
        if map[r] == u32::MAX {
            map[r] = n;
            n += 1;
        }
        *l = map[r];
    }
    (labels, n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_flat_halves_give_two_segments() {
        // left half black, right half white: exactly two components.
        let (w, h) = (20, 10);
        let plane: Vec<f32> = (0..w * h).map(|i| if i % w < 10 { 0.0 } else { 255.0 }).collect();
        let img = Planes { w, h, ch: vec![plane.clone(), plane.clone(), plane] };
        let (labels, n) = segment(&img, 0.0, 100.0, 5);
        assert_eq!(n, 2);
        // blurred, the step becomes two 1-px column strips (10 px each); a
        // min_size above that folds them into the halves again
        assert_eq!(segment(&img, 0.8, 100.0, 5).0.iter().max().map(|m| m + 1), Some(6));
        assert_eq!(segment(&img, 0.8, 100.0, 11).1, 2);
        assert!(labels.iter().enumerate().all(|(i, &l)| l == if i % w < 10 { labels[0] } else { labels[w - 1] }));
    }

    #[test]
    fn min_size_absorbs_small_components() {
        // a 2x2 white square in black: below min_size 10, so it joins the background.
        let (w, h) = (12, 12);
        let plane: Vec<f32> = (0..w * h).map(|i| if (5..7).contains(&(i % w)) && (5..7).contains(&(i / w)) { 255.0 } else { 0.0 }).collect();
        let img = Planes { w, h, ch: vec![plane.clone(), plane.clone(), plane] };
        assert_eq!(segment(&img, 0.0, 50.0, 1).1, 2);
        assert_eq!(segment(&img, 0.0, 50.0, 10).1, 1);
    }
}

/// One pass of a separable blur with kernel `k` of radius `r`, along x or
/// along y, the border pixels repeated.
fn blur_pass(src: &[f32], w: i64, h: i64, k: &[f32], r: i64, along_x: bool) -> Vec<f32> {
    let mut out = vec![0f32; src.len()];
    for y in 0..h {
        for x in 0..w {
            let mut acc = 0.0;
            for (t, kv) in k.iter().enumerate() {
                let at = if along_x { y * w + (x + t as i64 - r).clamp(0, w - 1) } else { (y + t as i64 - r).clamp(0, h - 1) * w + x };
                acc += kv * src[at as usize];
            }
            out[(y * w + x) as usize] = acc;
        }
    }
    out
}
