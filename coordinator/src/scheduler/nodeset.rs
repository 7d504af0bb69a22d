//! A fixed-size bit set of node positions, for cheap filtering of whole clusters.

/// Set of node positions `0..len`, one bit each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct NodeSet {
    words: Vec<u64>,
}

impl NodeSet {
    /// The positions `0..len` for which `member` holds.
    pub(super) fn from_fn(len: usize, mut member: impl FnMut(usize) -> bool) -> NodeSet {
        let mut words = vec![0u64; len.div_ceil(64)];
        for position in (0..len).filter(|&p| member(p)) {
            words[position / 64] |= 1 << (position % 64);
        }
        NodeSet { words }
    }

    /// Keeps only the positions also in `other` (a set of the same length).
    pub(super) fn intersect(&mut self, other: &NodeSet) {
        for (word, mask) in self.words.iter_mut().zip(&other.words) {
            *word &= mask;
        }
    }

    /// Takes `position` out of the set.
    pub(super) fn remove(&mut self, position: usize) {
        if let Some(word) = self.words.get_mut(position / 64) {
            *word &= !(1 << (position % 64));
        }
    }

    /// Positions in the set, ascending.
    pub(super) fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.words.iter().enumerate().flat_map(|(index, &word)| {
            let mut rest = word;
            std::iter::from_fn(move || {
                if rest == 0 {
                    return None;
                }
                let bit = rest.trailing_zeros() as usize;
                rest &= rest - 1;
                Some(index * 64 + bit)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::NodeSet;

    #[test]
    fn set_operations() {
        let mut evens = NodeSet::from_fn(130, |p| p % 2 == 0);
        let small = NodeSet::from_fn(130, |p| p < 7 || p == 128);
        evens.intersect(&small);
        evens.remove(4);
        evens.remove(500);
        assert_eq!(evens.iter().collect::<Vec<_>>(), vec![0, 2, 6, 128]);
        assert_eq!(NodeSet::from_fn(0, |_| true).iter().count(), 0);
    }
}
