//! Field names a plugin reads from every event, found in one pass.

use crate::event::{RawJson, same_name};

/// A set of field names a plugin reads from every event, built once (in
/// [`Plugin::new`](crate::Plugin::new)) and then resolved against each
/// event in one pass with [`Event::pick`](crate::Event::pick) or
/// [`Fields::pick`](crate::Fields::pick).
///
/// Each name gets a slot number when it is [`insert`](Self::insert)ed; the
/// [`Picked`] values are read back by slot. Looking up `k` names one by one
/// with [`Fields::get`](crate::Fields::get) compares each of them with the
/// event's names; a pick looks each event name up once in a small hash table
/// instead, which is what a plugin that reads several fields should use.
///
/// ```
/// use weir_sdk::{Event, FieldSet};
///
/// let mut names = FieldSet::new();
/// let age = names.insert("age");
/// let gender = names.insert("gender");
/// assert_eq!(names.insert("age"), age); // a name has one slot
///
/// let event = Event::new(br#"{"gender":"MALE","age":31,"h":9}"#);
/// let picked = event.pick(&names)?;
/// assert_eq!(picked.get(age).map(|raw| raw.get()), Some("31"));
/// assert_eq!(picked.get(gender).map(|raw| raw.get()), Some(r#""MALE""#));
///
/// let other = Event::new(br#"{"h":10}"#);
/// assert_eq!(other.pick(&names)?.get(age), None); // absent
/// # Ok::<(), weir_sdk::Error>(())
/// ```
#[derive(Debug, Clone, Default)]
pub struct FieldSet {
    names: Vec<String>,
    /// Open-addressing table of `(name length, slot)`, [`FREE`] where free;
    /// its length is a power of two at least twice the number of names. The
    /// length rejects most other names without reading the name.
    table: Vec<(usize, u32)>,
}

const FREE: (usize, u32) = (usize::MAX, u32::MAX);

impl FieldSet {
    /// An empty set.
    ///
    /// ```
    /// assert!(weir_sdk::FieldSet::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// The slot of `name`, added to the set if it was not in it yet. Slots
    /// are numbered from 0 in the order names are first inserted.
    ///
    /// ```
    /// let mut names = weir_sdk::FieldSet::new();
    /// assert_eq!((names.insert("a"), names.insert("b"), names.insert("a")), (0, 1, 0));
    /// ```
    pub fn insert(&mut self, name: &str) -> usize {
        if let Some(slot) = self.slot(name.as_bytes()) {
            return slot;
        }
        let slot = self.names.len();
        self.names.push(name.to_owned());
        if self.table.len() < 2 * self.names.len() {
            let size = (2 * self.names.len()).next_power_of_two().max(8);
            self.table = vec![FREE; size];
            for (slot, name) in self.names.iter().enumerate() {
                place(&mut self.table, name.as_bytes(), slot);
            }
        } else {
            place(&mut self.table, name.as_bytes(), slot);
        }
        slot
    }

    /// The slot of `name`, if it is in the set.
    ///
    /// ```
    /// let mut names = weir_sdk::FieldSet::new();
    /// names.insert("a");
    /// assert_eq!((names.slot_of("a"), names.slot_of("b")), (Some(0), None));
    /// ```
    pub fn slot_of(&self, name: &str) -> Option<usize> {
        self.slot(name.as_bytes())
    }

    /// The name in `slot`.
    ///
    /// ```
    /// let mut names = weir_sdk::FieldSet::new();
    /// let slot = names.insert("age");
    /// assert_eq!(names.name(slot), Some("age"));
    /// assert_eq!(names.name(slot + 1), None);
    /// ```
    pub fn name(&self, slot: usize) -> Option<&str> {
        self.names.get(slot).map(String::as_str)
    }

    /// How many names the set holds.
    ///
    /// ```
    /// let mut names = weir_sdk::FieldSet::new();
    /// names.insert("a");
    /// names.insert("a");
    /// assert_eq!(names.len(), 1);
    /// ```
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the set holds no names.
    ///
    /// ```
    /// assert!(weir_sdk::FieldSet::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The slot of the name spelled by `name`'s bytes. Inlined into the
    /// pick loop: in the guest a call per field costs more than the probe.
    #[inline(always)]
    pub(crate) fn slot(&self, name: &[u8]) -> Option<usize> {
        let mask = self.table.len().wrapping_sub(1);
        let mut at = bucket(name) & mask;
        loop {
            let &(len, slot) = self.table.get(at)?;
            if len == name.len() {
                let slot = slot as usize;
                if same_name(self.names.get(slot)?.as_bytes(), name) {
                    return Some(slot);
                }
            } else if slot == FREE.1 {
                return None;
            }
            at = (at + 1) & mask;
        }
    }
}

/// Puts `slot` into the first free place of `name`'s probe sequence.
fn place(table: &mut [(usize, u32)], name: &[u8], slot: usize) {
    let mask = table.len() - 1;
    let mut at = bucket(name) & mask;
    while table[at] != FREE {
        at = (at + 1) & mask;
    }
    let slot = u32::try_from(slot).expect("fewer than 2^32 field names");
    table[at] = (name.len(), slot);
}

/// A hash of a name from its length and its first and last bytes: no loop,
/// and field names of one event seldom share all three.
#[inline(always)]
fn bucket(name: &[u8]) -> usize {
    let first = name.first().copied().unwrap_or(0);
    let last = name.last().copied().unwrap_or(0);
    let mixed = (name.len() as u32)
        .wrapping_mul(0x9e37_79b9)
        .wrapping_add(u32::from(first).wrapping_mul(0x85eb_ca6b))
        .wrapping_add(u32::from(last).wrapping_mul(0xc2b2_ae35));
    (mixed ^ (mixed >> 15)) as usize
}

/// The values of a [`FieldSet`]'s names in one event, by slot: the raw JSON
/// text of each field, or `None` where the event does not have it. When a
/// name occurs more than once in the event, the last occurrence counts (as
/// with [`Fields::get`](crate::Fields::get)).
///
/// ```
/// let mut names = weir_sdk::FieldSet::new();
/// let a = names.insert("a");
/// let picked = weir_sdk::Event::new(br#"{"a":1,"a":2}"#).pick(&names)?;
/// assert_eq!(picked.get(a).map(|raw| raw.get()), Some("2"));
/// assert_eq!(picked.get(a + 1), None); // not a slot of the set
/// # Ok::<(), weir_sdk::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Picked<'a> {
    /// Slots below [`INLINE`]: most sets fit, and need no allocation.
    inline: [Option<RawJson<'a>>; INLINE],
    /// Slots from [`INLINE`] on; empty (and unallocated) for smaller sets.
    more: Vec<Option<RawJson<'a>>>,
}

/// Sets of up to this many names are picked without allocating.
const INLINE: usize = 16;

impl<'a> Picked<'a> {
    pub(crate) fn new<'n>(
        set: &FieldSet,
        fields: impl Iterator<Item = (&'n [u8], RawJson<'a>)>,
    ) -> Self {
        let mut picked = Picked {
            inline: [None; INLINE],
            more: vec![None; set.len().saturating_sub(INLINE)],
        };
        for (name, raw) in fields {
            if let Some(slot) = set.slot(name) {
                let value = match slot.checked_sub(INLINE) {
                    None => picked.inline.get_mut(slot),
                    Some(more) => picked.more.get_mut(more),
                };
                if let Some(value) = value {
                    *value = Some(raw);
                }
            }
        }
        picked
    }

    /// The raw JSON text of the field in `slot`, or `None` when the event
    /// does not have it (or `slot` is not one of the set's).
    #[inline]
    pub fn get(&self, slot: usize) -> Option<RawJson<'a>> {
        match slot.checked_sub(INLINE) {
            None => self.inline.get(slot).copied().flatten(),
            Some(more) => self.more.get(more).copied().flatten(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;

    /// Every name of a larger set is found in its own slot, absent names are
    /// not, whatever the collisions of the short hash.
    #[test]
    fn many_names_and_collisions() {
        let names: Vec<String> = (0..200)
            .map(|i| format!("f{}{}", "x".repeat(i % 7), i))
            .chain(["", "a", "b", "ab", "ba", "aXb", "aYb"].map(String::from))
            .collect();
        let mut set = FieldSet::new();
        for (i, name) in names.iter().enumerate() {
            assert_eq!(set.insert(name), i, "{name:?}");
        }
        for (i, name) in names.iter().enumerate() {
            assert_eq!(set.slot_of(name), Some(i), "{name:?}");
        }
        for absent in ["aZb", "f0x", "abc", "f", "x"] {
            assert_eq!(set.slot_of(absent), None, "{absent:?}");
        }
        assert_eq!(set.len(), names.len());
    }

    #[test]
    fn pick_agrees_with_get() {
        let text = r#"{"age":31,"a\"b":1,"age":"x","gender":null,"e_n":"구매"}"#;
        let event = Event::new(text.as_bytes());
        let fields = event.fields().unwrap();
        let mut set = FieldSet::new();
        for name in ["age", "a\"b", "gender", "e_n", "missing", ""] {
            set.insert(name);
        }
        let picked = fields.pick(&set);
        for slot in 0..set.len() {
            let name = set.name(slot).unwrap();
            assert_eq!(
                picked.get(slot).map(RawJson::get),
                fields.get(name).map(RawJson::get),
                "{name:?}"
            );
        }
        assert_eq!(picked.get(0).map(RawJson::get), Some(r#""x""#));
    }

    #[test]
    fn empty_set_picks_nothing() {
        let set = FieldSet::new();
        let picked = Event::new(br#"{"a":1}"#).pick(&set).unwrap();
        assert_eq!(picked.get(0), None);
        assert!(Event::new(b"not json").pick(&set).is_err());
    }
}
