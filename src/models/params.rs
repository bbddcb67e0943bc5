//! Parameters live in one flat buffer (llm.c style), addressed by a table of Hugging Face
//! names, shapes and ranges. Gradients and optimizer moments use the same layout.

use std::ops::Range;

#[derive(Clone, Debug)]
pub struct ParamInfo {
    pub name: String,
    pub shape: Vec<usize>,
    pub range: Range<usize>,
}

#[derive(Clone, Debug, Default)]
pub struct ParamTable {
    infos: Vec<ParamInfo>,
    total: usize,
}

impl ParamTable {
    /// Appends a parameter and returns its range in the flat buffer.
    /// Sizes saturate instead of wrapping: a table too large for memory is refused by
    /// `ModelState::new` before anything is allocated.
    pub fn push(&mut self, name: String, shape: &[usize]) -> Range<usize> {
        let n = shape.iter().fold(1usize, |p, &d| p.saturating_mul(d));
        let range = self.total..self.total.saturating_add(n);
        self.infos.push(ParamInfo { name, shape: shape.to_vec(), range: range.clone() });
        self.total = range.end;
        range
    }

    /// Keeps the first `n` parameters.
    pub fn truncate(&mut self, n: usize) {
        self.infos.truncate(n);
        self.total = self.infos.last().map_or(0, |i| i.range.end);
    }

    pub fn infos(&self) -> &[ParamInfo] {
        &self.infos
    }

    pub fn get(&self, name: &str) -> Option<&ParamInfo> {
        self.infos.iter().find(|p| p.name == name)
    }

    /// Number of scalars in all parameters.
    pub fn total(&self) -> usize {
        self.total
    }
}

/// Two disjoint mutable views into one buffer.
pub fn two_mut<F>(buf: &mut [F], a: Range<usize>, b: Range<usize>) -> (&mut [F], &mut [F]) {
    assert!(a.end <= b.start || b.end <= a.start, "overlapping ranges {a:?} and {b:?}");
    if a.start < b.start {
        let (lo, hi) = buf.split_at_mut(b.start);
        (&mut lo[a], &mut hi[..b.end - b.start])
    } else {
        let (lo, hi) = buf.split_at_mut(a.start);
        let (bb, aa) = (&mut lo[b], &mut hi[..a.end - a.start]);
        (aa, bb)
    }
}
