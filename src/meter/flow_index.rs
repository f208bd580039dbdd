//! The flow table's index: slot numbers by key hash. Open addressing with linear probing, at
//! most half full, each entry 8 bytes: the upper 32 bits of the key's hash (the tag) and the
//! slot number. Written here rather than taken from hashbrown (used before) because the packet
//! path must prefetch a key's entry from its hash alone, packets before reading it, and then
//! its flow's slot from the entry alone, without reading any slot: hashbrown offers neither.
//! Deletion shifts the entries after the hole back (no tombstones), so a lookup never probes
//! further than the cluster its key is in.

use super::prefetch::prefetch;

pub struct FlowIndex {
    /// 0: empty; else tag << 32 | (slot + 1).
    entries: Vec<u64>,
    len: usize,
}

const MIN_CAPACITY: usize = 1 << 10;

fn tag(hash: u64) -> u32 {
    (hash >> 32) as u32
}

fn slot_of(entry: u64) -> u32 {
    (entry as u32).wrapping_sub(1)
}

impl Default for FlowIndex {
    fn default() -> Self {
        FlowIndex {
            entries: vec![0; MIN_CAPACITY],
            len: 0,
        }
    }
}

impl FlowIndex {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn mask(&self) -> usize {
        self.entries.len() - 1
    }

    /// Where probing for a tag starts. From the tag, so growing needs no hash but the entry's
    /// (which caps the table at 2^32 entries: twice the flow table's largest).
    fn home(&self, tag: u32) -> usize {
        tag as usize & self.mask()
    }

    /// Brings the entry where `hash`'s probe starts towards the cache.
    pub fn prefetch(&self, hash: u64) {
        prefetch(self.entries.as_ptr().wrapping_add(self.home(tag(hash))));
    }

    /// Slots whose tag is `hash`'s, in probe order.
    fn probe(&self, hash: u64) -> impl Iterator<Item = (usize, u32)> + '_ {
        let (tag, mask) = (tag(hash), self.mask());
        let mut at = self.home(tag);
        std::iter::from_fn(move || {
            loop {
                let e = self.entries[at];
                if e == 0 {
                    return None;
                }
                let here = at;
                at = (at + 1) & mask;
                if (e >> 32) as u32 == tag {
                    return Some((here, slot_of(e)));
                }
            }
        })
    }

    /// The first slot with `hash`'s tag, without looking at any slot: almost always the key's
    /// flow when it has one (32 bits filter), which is all a prefetch needs.
    pub fn candidate(&self, hash: u64) -> Option<u32> {
        self.probe(hash).next().map(|(_, slot)| slot)
    }

    /// The slot with `hash` for which `is_key` holds.
    pub fn find(&self, hash: u64, mut is_key: impl FnMut(u32) -> bool) -> Option<u32> {
        self.probe(hash).find(|&(_, s)| is_key(s)).map(|(_, s)| s)
    }

    /// Adds a slot for a key the index does not hold. Slots are below `u32::MAX` (the flow
    /// table holds at most 2^31), so no entry is 0.
    pub fn insert(&mut self, hash: u64, slot: u32) {
        debug_assert!(slot < u32::MAX);
        if 2 * (self.len + 1) > self.entries.len() {
            self.grow();
        }
        self.place(tag(hash), slot);
        self.len += 1;
    }

    fn place(&mut self, tag: u32, slot: u32) {
        let mask = self.mask();
        let mut at = self.home(tag);
        while self.entries[at] != 0 {
            at = (at + 1) & mask;
        }
        self.entries[at] = (tag as u64) << 32 | slot.wrapping_add(1) as u64;
    }

    fn grow(&mut self) {
        let bigger = vec![0; 2 * self.entries.len()];
        let old = std::mem::replace(&mut self.entries, bigger);
        for e in old.into_iter().filter(|&e| e != 0) {
            self.place((e >> 32) as u32, slot_of(e));
        }
    }

    /// Removes `slot`, found under `hash`. Entries after it in its cluster move back into the
    /// hole when their probe would pass it, so no lookup stops early at it.
    pub fn remove(&mut self, hash: u64, slot: u32) {
        let Some((mut hole, _)) = self.probe(hash).find(|&(_, s)| s == slot) else {
            return;
        };
        let mask = self.mask();
        let mut at = hole;
        loop {
            at = (at + 1) & mask;
            let e = self.entries[at];
            if e == 0 {
                break;
            }
            let home = self.home((e >> 32) as u32);
            // The hole lies on the way from this entry's home to it: move it there.
            if at.wrapping_sub(home) & mask >= at.wrapping_sub(hole) & mask {
                self.entries[hole] = e;
                hole = at;
            }
        }
        self.entries[hole] = 0;
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    proptest::proptest! {
        /// Against a HashMap, with hashes crowded into few homes so clusters form, wrap around
        /// the end and are cut by removals.
        #[test]
        fn behaves_as_a_map(ops in proptest::collection::vec((0u64..64, 0u32..8, proptest::bool::ANY), 1..600)) {
            let mut index = FlowIndex::default();
            let mut model: HashMap<u64, u32> = HashMap::new();
            let mut next_slot = 0;
            for (key, tag_low, insert) in ops {
                // The home is the tag's low bits: 8 values near the end of the table.
                let hash = ((1020 + tag_low as u64) | key << 16) << 32 | key;
                match (model.get(&hash).copied(), insert) {
                    (None, true) => {
                        index.insert(hash, next_slot);
                        model.insert(hash, next_slot);
                        next_slot += 1;
                    }
                    (Some(slot), false) => {
                        index.remove(hash, slot);
                        model.remove(&hash);
                    }
                    _ => {}
                }
                proptest::prop_assert_eq!(index.len(), model.len());
                for (&h, &slot) in &model {
                    proptest::prop_assert_eq!(index.find(h, |s| s == slot), Some(slot));
                    proptest::prop_assert_eq!(index.candidate(h), Some(slot));
                }
            }
            for (&h, &slot) in &model {
                index.remove(h, slot);
            }
            proptest::prop_assert!(index.is_empty());
            proptest::prop_assert!(index.entries.iter().all(|&e| e == 0));
        }
    }

    #[test]
    fn grows_and_keeps_every_slot() {
        let mut index = FlowIndex::default();
        let hash = |i: u64| i.wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for i in 0..10_000u32 {
            index.insert(hash(i as u64), i);
        }
        assert!(index.entries.len() >= 20_000);
        for i in 0..10_000u32 {
            assert_eq!(index.find(hash(i as u64), |s| s == i), Some(i));
        }
        assert_eq!(index.find(hash(10_001), |_| true), None);
    }
}
