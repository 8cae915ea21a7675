//! Stage 1 of the pipeline: datasets in the PASCAL VOC layout ([`voc`]) and
//! the generated default dataset ([`synth`]).

pub mod synth;
pub mod voc;

pub use voc::{Annotation, DataError, Dataset, Object};
