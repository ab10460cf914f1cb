//! Which JSON paths the host extracts from each event, and where each value lives in an event's slot table.
//!
//! A chain never needs the whole document of an event: it needs the paths its plugins read and write, the id,
//! key and time paths, and the columns of the tables it writes. A `Layout` lists those paths once, as a trie the
//! parser walks in a single pass over the raw text (skipping everything else without building it), and gives
//! each path a slot. Slots are numbered depth-first, so the slots below any node of the trie are contiguous.

use std::collections::HashMap;
use std::ops::Range;

use super::{EventShape, JsonPath};

/// The index of a path in an event's slot table.
pub type Slot = u16;

#[derive(Debug)]
pub(crate) struct Node {
    /// `key` as an array index, when it is one.
    pub(crate) index: Option<usize>,
    pub(crate) children: Vec<usize>,
    /// The children by key length, then key: the parser looks up every key of every object it walks, and
    /// almost every key of a document is not wanted, so a miss must cost one length check.
    by_len: Vec<Vec<(Box<[u8]>, usize)>>,
    pub(crate) slot: Option<Slot>,
    /// The slots of this node and everything below it.
    pub(crate) slots: Range<usize>,
}

impl Node {
    fn new(key: &str) -> Self {
        Node {
            index: key.parse().ok(),
            children: Vec::new(),
            by_len: Vec::new(),
            slot: None,
            slots: 0..0,
        }
    }

    fn add_child(&mut self, key: &str, child: usize) {
        self.children.push(child);
        if self.by_len.len() <= key.len() {
            self.by_len.resize_with(key.len() + 1, Vec::new);
        }
        self.by_len[key.len()].push((key.as_bytes().into(), child));
    }

    #[inline]
    pub(crate) fn child(&self, key: &str) -> Option<usize> {
        self.child_bytes(key.as_bytes())
    }

    /// Looks a key up by its bytes (the scanner has the raw bytes of the key in hand).
    #[inline]
    pub(crate) fn child_bytes(&self, key: &[u8]) -> Option<usize> {
        self.by_len
            .get(key.len())?
            .iter()
            .find(|(k, _)| same_len_eq(k, key))
            .map(|(_, c)| *c)
    }

    pub(crate) fn child_at(&self, nodes: &[Node], index: usize) -> Option<usize> {
        self.children
            .iter()
            .copied()
            .find(|&c| nodes[c].index == Some(index))
    }
}

/// Whether two byte strings of the same length are equal, compared inline with overlapping word loads: keys
/// are short, and a call into libc's `memcmp` for each cost more than the comparison (4 % of the lake bench).
#[inline]
fn same_len_eq(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    macro_rules! word {
        ($t:ty, $at:expr) => {{
            const W: usize = size_of::<$t>();
            let at = $at;
            <$t>::from_ne_bytes(a[at..at + W].try_into().expect("in bounds"))
                == <$t>::from_ne_bytes(b[at..at + W].try_into().expect("in bounds"))
        }};
    }
    match n {
        0 => true,
        1 => a[0] == b[0],
        2..4 => word!(u16, 0) && word!(u16, n - 2),
        4..8 => word!(u32, 0) && word!(u32, n - 4),
        _ => (0..n / 8).all(|i| word!(u64, i * 8)) && word!(u64, n - 8),
    }
}

/// What a slot is used for; decides how a write to a related path is handled (see `Event::set`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Someone reads the value: a plugin, the event shape, a table column.
    pub read: bool,
    /// A plugin may write it.
    pub written: bool,
}

#[derive(Debug)]
pub struct Layout {
    paths: Vec<JsonPath>,
    usage: Vec<Usage>,
    by_text: HashMap<String, Slot>,
    pub(crate) nodes: Vec<Node>,
    /// Per slot: the slots whose path is a strict prefix or a strict extension of it. A write to a slot with a
    /// related slot that is read goes through the whole document, so that no read is ever stale.
    related: Vec<Vec<Slot>>,
    /// Per slot: the slots of its strict prefixes, nearest first (they are all in the layout for written paths).
    ancestors: Vec<Vec<Slot>>,
    /// Per slot: a write there needs no check and touches no other slot (a top-level path nobody reads a part
    /// of). Most writes are such, and take a fast path.
    plain: Vec<bool>,
    pub(crate) id: Slot,
    pub(crate) key: Option<Slot>,
    pub(crate) time: Slot,
}

/// The most paths one layout may hold; far above what any chain declares.
pub const MAX_SLOTS: usize = u16::MAX as usize;

impl Layout {
    /// A layout for `shape`, the paths read (`reads`) and the paths plugins may write (`writes`). Every strict
    /// prefix of a written path is added too, so a write can be checked against what the event holds there.
    pub fn new<'a>(
        shape: &EventShape,
        reads: impl IntoIterator<Item = &'a JsonPath>,
        writes: impl IntoIterator<Item = &'a JsonPath>,
    ) -> Result<Self, String> {
        let mut wanted: Vec<(JsonPath, Usage)> = Vec::new();
        let mut add =
            |path: &JsonPath, usage: Usage| match wanted.iter_mut().find(|(p, _)| p == path) {
                Some((_, u)) => {
                    u.read |= usage.read;
                    u.written |= usage.written;
                }
                None => wanted.push((path.clone(), usage)),
            };
        let read = Usage {
            read: true,
            written: false,
        };
        add(&shape.id, read);
        add(&shape.time, read);
        if let Some(key) = &shape.key {
            add(key, read);
        }
        for path in reads {
            add(path, read);
        }
        for path in writes {
            for prefix in path.prefixes() {
                add(&prefix, Usage::default());
            }
            add(
                path,
                Usage {
                    read: false,
                    written: true,
                },
            );
        }
        if wanted.len() > MAX_SLOTS {
            return Err(format!(
                "{} distinct field paths; a chain may use at most {MAX_SLOTS}",
                wanted.len()
            ));
        }

        // The trie, then slots in depth-first order.
        let mut nodes = vec![Node::new("")];
        let mut terminal: Vec<Option<usize>> = vec![None];
        for (i, (path, _)) in wanted.iter().enumerate() {
            let mut node = 0;
            for segment in path.segments() {
                node = match nodes[node].child(segment) {
                    Some(child) => child,
                    None => {
                        nodes.push(Node::new(segment));
                        terminal.push(None);
                        let child = nodes.len() - 1;
                        nodes[node].add_child(segment, child);
                        child
                    }
                };
            }
            terminal[node] = Some(i);
        }
        let mut order = Vec::with_capacity(wanted.len());
        number(&mut nodes, &terminal, 0, &mut order);
        let paths: Vec<JsonPath> = order.iter().map(|&i| wanted[i].0.clone()).collect();
        let usage: Vec<Usage> = order.iter().map(|&i| wanted[i].1).collect();
        let by_text: HashMap<String, Slot> = paths
            .iter()
            .enumerate()
            .map(|(slot, p)| (p.as_str().to_string(), slot as Slot))
            .collect();
        let related: Vec<Vec<Slot>> = paths
            .iter()
            .map(|p| {
                paths
                    .iter()
                    .enumerate()
                    .filter(|(_, q)| *q != p && (p.is_prefix_of(q) || q.is_prefix_of(p)))
                    .map(|(s, _)| s as Slot)
                    .collect()
            })
            .collect();
        let ancestors: Vec<Vec<Slot>> = paths
            .iter()
            .map(|p| {
                let mut prefixes: Vec<Slot> = p
                    .prefixes()
                    .filter_map(|q| by_text.get(q.as_str()).copied())
                    .collect();
                prefixes.reverse();
                prefixes
            })
            .collect();
        let slot = |path: &JsonPath| by_text[path.as_str()];
        let plain = related
            .iter()
            .zip(&ancestors)
            .map(|(related, ancestors)| {
                ancestors.is_empty() && related.iter().all(|&r| !usage[r as usize].read)
            })
            .collect();
        Ok(Layout {
            plain,
            id: slot(&shape.id),
            key: shape.key.as_ref().map(slot),
            time: slot(&shape.time),
            paths,
            usage,
            by_text,
            nodes,
            related,
            ancestors,
        })
    }

    /// The number of slots.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    pub fn slot(&self, path: &str) -> Option<Slot> {
        self.by_text.get(path).copied()
    }

    pub fn path(&self, slot: Slot) -> &JsonPath {
        &self.paths[slot as usize]
    }

    pub fn paths(&self) -> &[JsonPath] {
        &self.paths
    }

    pub fn usage(&self, slot: Slot) -> Usage {
        self.usage[slot as usize]
    }

    pub(crate) fn related(&self, slot: Slot) -> &[Slot] {
        &self.related[slot as usize]
    }

    pub(crate) fn ancestors(&self, slot: Slot) -> &[Slot] {
        &self.ancestors[slot as usize]
    }

    pub(crate) fn is_plain(&self, slot: Slot) -> bool {
        self.plain[slot as usize]
    }
}

/// Gives slots to terminal nodes in depth-first order and records each node's slot range.
fn number(nodes: &mut [Node], terminal: &[Option<usize>], node: usize, order: &mut Vec<usize>) {
    let start = order.len();
    if let Some(path) = terminal[node] {
        nodes[node].slot = Some(order.len() as Slot);
        order.push(path);
    }
    for i in 0..nodes[node].children.len() {
        let child = nodes[node].children[i];
        number(nodes, terminal, child, order);
    }
    nodes[node].slots = start..order.len();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(texts: &[&str]) -> Vec<JsonPath> {
        texts.iter().map(|t| JsonPath::parse(t).unwrap()).collect()
    }

    #[test]
    fn keys_of_every_length_compare_byte_for_byte() {
        let key: Vec<u8> = (b'a'..=b'z').collect();
        for n in 0..=key.len() {
            let a = &key[..n];
            assert!(same_len_eq(a, a), "{n}");
            for at in 0..n {
                let mut b = a.to_vec();
                b[at] ^= 0x20;
                assert!(!same_len_eq(a, &b), "{n} bytes, differing at {at}");
            }
        }
    }

    #[test]
    fn slots_are_depth_first_and_prefixes_of_writes_are_added() {
        let reads = paths(&["length.new", "bot", "length.old"]);
        let writes = paths(&["enriched.project"]);
        let layout = Layout::new(&EventShape::default(), &reads, &writes).unwrap();
        let texts: Vec<&str> = layout.paths().iter().map(JsonPath::as_str).collect();
        assert_eq!(
            texts,
            [
                "meta.id",
                "meta.dt",
                "length.new",
                "length.old",
                "bot",
                "enriched",
                "enriched.project"
            ]
        );
        let meta = layout.nodes[0].child("meta").unwrap();
        assert_eq!(layout.nodes[meta].slots, 0..2);
        let enriched = layout.slot("enriched").unwrap();
        assert!(!layout.usage(enriched).read);
        assert_eq!(
            layout.ancestors(layout.slot("enriched.project").unwrap()),
            [enriched]
        );
        assert_eq!(
            layout.related(enriched),
            [layout.slot("enriched.project").unwrap()]
        );
    }
}
