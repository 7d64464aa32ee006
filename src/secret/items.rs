//! The items a Secret is built from: the main item (`spec.itemPath`) and the others of
//! `spec.items`, each by its name. Shaping picks values from them by name; a template context
//! can expose them the same way (`Items.<name>`).

use std::collections::BTreeMap;

use crate::connect::model::ItemWithFiles;

/// The main item and the named others, as fetched.
#[derive(Clone, Copy, Debug)]
pub struct SourceItems<'a> {
    pub main: &'a ItemWithFiles,
    /// The items of `spec.items`, by name (sorted, so every walk over them is in one order).
    pub named: &'a BTreeMap<String, ItemWithFiles>,
}

impl<'a> SourceItems<'a> {
    /// Just the main item: a Secret without `spec.items`.
    pub fn single(main: &'a ItemWithFiles) -> Self {
        static NONE: BTreeMap<String, ItemWithFiles> = BTreeMap::new();
        SourceItems { main, named: &NONE }
    }

    /// The item a reference names: `None` is the main item. `None` back when no item has
    /// that name (the shaping was checked before the fetch, so only a caller's mistake).
    pub fn get(&self, name: Option<&str>) -> Option<&'a ItemWithFiles> {
        match name {
            None => Some(self.main),
            Some(name) => self.named.get(name),
        }
    }
}
