//! Stage 1 of the pipeline: datasets in the PASCAL VOC layout ([`voc`]) and
//! the COCO layout ([`coco`]), the generated default dataset ([`synth`]), and
//! large photographs cut into a VOC dataset ([`tile`]).

pub mod coco;
pub mod synth;
pub mod tile;
pub mod voc;

pub use voc::{Annotation, DataError, Dataset, Object};

/// Parses a text file of records `<id> <N numbers>`, one per line (the VOC
/// results format, the proposals file format). Blank lines and lines starting
/// with `#` are skipped. Every error names the file, the line and the value;
/// `format` is the line's shape as the error shows it.
pub fn parse_records<const N: usize>(path: &std::path::Path, text: &str, format: &str) -> anyhow::Result<Vec<(usize, String, [f32; N])>> {
    use anyhow::{bail, Context};
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != N + 1 {
            bail!("{}:{}: expected `{format}`, found {} fields", path.display(), n + 1, f.len());
        }
        let mut v = [0f32; N];
        for k in 0..N {
            v[k] = f[k + 1].parse::<f32>().ok().filter(|x| x.is_finite()).with_context(|| format!("{}:{}: {:?} is not a finite number", path.display(), n + 1, f[k + 1]))?;
        }
        out.push((n + 1, f[0].to_string(), v));
    }
    Ok(out)
}
